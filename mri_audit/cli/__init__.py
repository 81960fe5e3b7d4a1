"""The ``mri-audit`` command line: a thin click group; each command lives in its own module."""

from __future__ import annotations

import logging
import sys

import click

from mri_audit import __version__
from mri_audit.errors import MriAuditError


class AuditGroup(click.Group):
    """A click group that turns :class:`MriAuditError` into one line and its exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MriAuditError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.exit_code)
        except click.UsageError as err:
            # A bad option of a command: one line naming it (and where to read more), exit 2.
            sub = err.ctx.command_path if err.ctx is not None else ctx.command_path
            message = " ".join(err.format_message().split())
            click.echo(f"Error: {message} (see '{sub} --help')", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mri-audit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Audit PyTorch MRI reconstruction models for false negatives (FNAF attacks).

    Start with `mri-audit run --model examples/unet.py:UNet` to audit a model on the built-in
    synthetic phantoms, or `mri-audit data synth --out phantoms/` to write fastMRI-format files.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    logging.getLogger("mri_audit").setLevel(level)
    ctx.ensure_object(dict)


def _register() -> None:
    from mri_audit.cli import attacks_cmd, check, data, harden, report_cmd, run

    cli.add_command(run.run)
    cli.add_command(harden.harden)
    cli.add_command(check.check)
    cli.add_command(report_cmd.report)
    cli.add_command(attacks_cmd.attacks)
    cli.add_command(data.data)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mri-audit")
