"""``python -m mri_audit`` (also the entry point for ``torchrun -m mri_audit``)."""

from mri_audit.cli import main

if __name__ == "__main__":
    main()
