"""Evidence a reviewer can check: the journal chain, the manifest, signatures, verification."""
