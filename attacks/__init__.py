"""mri-audit's built-in attacks, registered through the ``mri_audit.attacks`` entry points.

``mri_audit`` never imports this package directly: a third-party attack is added exactly the
same way, by declaring an entry point in its own package.
"""
