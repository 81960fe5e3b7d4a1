"""The ``mri-audit`` command line: a thin click group; each command lives in its own module.

Every failure the user can cause ends in one line on standard error and a documented exit
status (``docs/errors.md``): :class:`MriAuditError` with its own status, a usage error of the
group or of a command with 2, and an interruption (Ctrl-C) with 130 and a line saying what is
saved (see :func:`on_interrupt`).
"""

from __future__ import annotations

import logging
import sys

import click

from mri_audit import __version__
from mri_audit.errors import MriAuditError

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""

_SAVED_KEY = "mri_audit.saved_on_interrupt"
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def command_line() -> list[str]:
    """This invocation as the user would type it again (``python -m mri_audit`` runs as
    ``__main__.py``: recorded as ``mri-audit``)."""
    import sys
    from pathlib import Path

    name = Path(sys.argv[0]).name
    return ["mri-audit" if name == "__main__.py" else name, *sys.argv[1:]]


def on_interrupt(saved: str) -> None:
    """Say what an interruption from now on leaves behind.

    The group prints ``Interrupted: <saved>`` and exits 130 when Ctrl-C stops the command;
    without a call it prints ``Interrupted: nothing was written``.

    Args:
        saved: e.g. ``"robust.pt.ckpt holds epoch 2 of 5; run the same command with --resume
            to continue"``.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_SAVED_KEY] = saved  # ``meta`` is shared by every context of one invocation


def _usage_line(err: click.UsageError, ctx: click.Context | None) -> str:
    """One line for a usage error, naming where to read more."""
    where = err.ctx if err.ctx is not None else ctx
    path = where.command_path if where is not None else "mri-audit"
    message = " ".join(err.format_message().split())
    return f"Error: {message} (see '{path} --help')"


def _interrupted(ctx: click.Context | None) -> None:
    """Print what an interruption left behind."""
    meta = ctx.meta if ctx is not None else {}
    saved = meta.get(_SAVED_KEY) or "nothing was written"
    click.echo(f"\nInterrupted: {saved}", err=True)


class AuditGroup(click.Group):
    """A click group that turns every user-caused failure into one line and its exit status:
    :class:`MriAuditError` (its own status), click usage errors (2) and Ctrl-C (130)."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        # The group's own options and arguments are parsed here, before invoke().
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _NO_ARGS_IS_HELP:
            raise  # `mri-audit` alone prints the help
        except click.UsageError as err:
            click.echo(_usage_line(err, None), err=True)
            raise click.exceptions.Exit(err.exit_code) from None
        except (KeyboardInterrupt, click.Abort):
            _interrupted(None)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MriAuditError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.exit_code)
        except _NO_ARGS_IS_HELP:
            raise  # `mri-audit data` alone prints its help
        except click.UsageError as err:
            # A bad command name, or a bad option of a command: one line, exit 2.
            click.echo(_usage_line(err, ctx), err=True)
            ctx.exit(err.exit_code)
        except (KeyboardInterrupt, click.Abort):
            _interrupted(ctx)
            ctx.exit(EXIT_INTERRUPTED)


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
    from mri_audit.cli import attacks_cmd, check, data, harden, map_cmd, report_cmd, run, verify_cmd
    from mri_audit.cli.keygen_cmd import keygen

    cli.add_command(run.run)
    cli.add_command(harden.harden)
    cli.add_command(check.check)
    cli.add_command(report_cmd.report)
    cli.add_command(attacks_cmd.attacks)
    cli.add_command(data.data)
    cli.add_command(map_cmd.map_command)
    cli.add_command(verify_cmd.verify)
    cli.add_command(keygen)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mri-audit")
