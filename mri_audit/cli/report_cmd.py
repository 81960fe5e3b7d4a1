"""``mri-audit report``: (re-)render the HTML report of an audit from its ``results.json``, or
re-read the audit under another criterion or other thresholds without recomputing."""

from __future__ import annotations

import click

from mri_audit.cli.settings import config_option, setting_options
from mri_audit.errors import MriAuditError, UsageError
from mri_audit.settings import REPORT, check_settings


@click.command("report")
@click.argument("results", type=click.Path(path_type=str))
@config_option("report")
@setting_options(REPORT)
@click.pass_context
def report(
    ctx: click.Context,
    results: str,
    out: str | None,
    criterion: str | None,
    margin: float | None,
    min_recovery: float | None,
    threshold: float | None,
) -> None:
    """Render the self-contained HTML report of an audit.

    RESULTS is the audit's results.json or the audit folder holding it; records.csv and
    audit_images.npz are read from the same folder when present. An audit whose report failed
    to render (results.json says so) is finished: its report is rendered and results.json
    marked complete.

    With --criterion (or a threshold option alone, which keeps the audit's criterion) the audit
    is re-read from its records: every record keeps each criterion's selection, and selection
    never depends on the thresholds. fnaf-rs's re-read equals a fresh audit; fnaf-fd and
    fnaf-pgd searched under the audit's own criterion, so their re-read is the best among the
    candidates that search evaluated.
    """
    given = {"out": out, "criterion": criterion, "margin": margin}
    given.update(min_recovery=min_recovery, threshold=threshold)
    try:
        values = check_settings(REPORT, given, text=True)
    except MriAuditError as err:
        click.echo(f"Error: {err}", err=True)
        ctx.exit(err.exit_code)
    out, criterion = values["out"], values["criterion"]
    thresholds = {k: values[k] for k in ("margin", "min_recovery", "threshold")}
    reread = criterion is not None or any(v is not None for v in thresholds.values())
    try:
        from mri_audit.report.failures import finish_audit, rendering
        from mri_audit.report.html import require_complete

        finished = finish_audit(results)  # an audit whose report failed: render it now
        checked = require_complete(results)
        if reread and checked.get("kind") == "map":
            raise UsageError(
                f"{results} is a feature-recovery map, not an audit: --criterion, --margin, "
                "--min-recovery and --threshold re-read an audit's records; run `mri-audit map` "
                "again with --margin to change the map's erasure rule"
            )
        if not reread:
            from mri_audit.audit.reread import render_reread

            if finished is None or out is not None:
                with rendering(f"rendering the report of {results}", "no file was changed"):
                    finished = render_reread(results, out)
            click.echo(str(finished))
            return
        from mri_audit.audit.reread import reread_audit
        from mri_audit.report.tables import attack_table

        path, json_path, reread_results = reread_audit(
            results, criterion, out_path=out, **thresholds
        )
    except MriAuditError as err:
        # Also one line when the command is invoked on its own, outside the mri-audit group.
        click.echo(f"Error: {err}", err=True)
        ctx.exit(err.exit_code)
    click.echo(attack_table(reread_results))
    click.echo(f"\nRe-read under {reread_results['config']['criterion']} without recomputing.")
    click.echo(f"Wrote {json_path}")
    click.echo(str(path))
