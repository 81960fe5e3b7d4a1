"""``mri-audit keygen``: an Ed25519 key pair to sign audits with (the optional ``sign`` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from mri_audit.errors import MriAuditError


@click.command("keygen")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace existing key files at PATH and PATH.pub.")
@click.pass_context
def keygen(ctx: click.Context, path: Path, force: bool) -> None:
    """Make an Ed25519 key pair: the private key PATH and the public key PATH.pub.

    Sign an audit with the private key (--sign PATH); a reviewer checks the signature with the
    public key (mri-audit verify AUDIT --key PATH.pub). The private key is written unencrypted,
    readable by you only (mode 0600): keep it secret.

    A valid signature proves that the signed files (results.json with the journal's head and the
    manifest, the journal, and every file the manifest lists) did not change after signing, and
    that they were signed by whoever holds the private key. It does not prove that the audit was
    honest, i.e. that its numbers come from the model and data it names: mri-audit verify AUDIT
    --replay N checks that by re-running records.

    \b
    Needs the optional 'cryptography' package:
        pip install 'mri-audit[sign]'
    """
    try:
        from mri_audit.evidence import signing

        private, public = signing.keygen(path, force=force)
        kid = signing.key_id(signing.load_public_key(public))
    except MriAuditError as err:
        # Also one line when the command is invoked on its own, outside the mri-audit group.
        click.echo(f"Error: {err}", err=True)
        ctx.exit(err.exit_code)
    click.echo(f"Private key: {private}")
    click.echo(f"Public key:  {public} (key id {kid[:16]})")
    click.echo(
        f"keep {private} secret; give {public} to reviewers (mri-audit verify AUDIT --key {public})"
    )
