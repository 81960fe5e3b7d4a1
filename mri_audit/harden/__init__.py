"""FNAF-robust fine-tuning (``mri-audit harden``): trainer, losses, weight blends."""
