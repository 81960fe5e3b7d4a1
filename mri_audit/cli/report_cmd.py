"""``mri-audit report``: (re-)render the HTML report of an audit from its ``results.json``."""

from __future__ import annotations

import click

from mri_audit.errors import MriAuditError


@click.command("report")
@click.argument("results", type=click.Path(path_type=str))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Where to write the HTML report (default: report.html beside results.json).",
)
@click.pass_context
def report(ctx: click.Context, results: str, out: str | None) -> None:
    """Render the self-contained HTML report of an audit.

    RESULTS is the audit's results.json or the audit folder holding it; records.csv and
    audit_images.npz are read from the same folder when present.
    """
    from mri_audit.report import render_report

    try:
        path = render_report(results, out)
    except MriAuditError as err:
        # Also one line when the command is invoked on its own, outside the mri-audit group.
        click.echo(f"Error: {err}", err=True)
        ctx.exit(err.exit_code)
    click.echo(str(path))
