"""``mri-audit verify AUDIT``: check an audit folder as a whole (no model needed, seconds), and
with ``--replay N`` re-run N records through the model."""

from __future__ import annotations

import secrets
import sys

import click

from mri_audit.cli.settings import checked, config_option, setting_options
from mri_audit.settings import VERIFY


@click.command("verify")
@click.argument("audit", type=click.Path(path_type=str))
@config_option("verify")
@setting_options(VERIFY)
def verify(audit: str, **opts) -> None:
    """Check that an audit folder is what its audit wrote, and that its numbers hold.

    AUDIT is the audit's folder (or its results.json, or a map's folder). One line per check:

    \b
    journal    the hash chain of records.jsonl is whole and ends at results.json's head
    files      records.csv, audit_images.npz and report.html match results.json's SHA-256s
    records    records.csv holds exactly the journal's records
    results    the attack table, intervals, paired tests, transfer, verdict, worst cases
               and warnings recompute from the records (as `mri-audit report` does)
    report     report.html is what results.json renders to
    signature  with --key: signature.json verifies with that public key
    replay     with --replay N: N records (picked from the chain head and --nonce) re-run
               through the model and data: r, r0 and e within the stated tolerance

    Then VERIFIED (exit 0) or what failed: exit 4 for a broken journal or a file that does
    not match, 8 when whole files do not agree (results, report, signature, replay). An
    unkeyed chain can be recomputed by whoever rewrites every file: a signature ties the
    files to its signer, a replay ties the numbers to the model.
    """
    opts = checked(VERIFY, opts)
    nonce = opts["nonce"]
    if opts["replay"] and nonce is None:
        nonce = secrets.token_hex(8)
        click.echo(f"nonce {nonce} (random; pass --nonce {nonce} to replay the same records)")
    from mri_audit.evidence.verify import BROKEN, verify_folder

    overrides = {"models": list(opts["models"]), "weights": list(opts["weights"])}
    overrides.update(data=opts["data"], device=opts["device"])
    checks = verify_folder(
        audit, key=opts["key"], replay=opts["replay"], nonce=nonce or "", overrides=overrides
    )
    for check in checks:
        click.echo(check.line())
    failed = [c for c in checks if c.ok is False]
    if not failed:
        click.echo("VERIFIED")
        return
    names = ", ".join(dict.fromkeys(c.name for c in failed))
    click.echo(f"NOT VERIFIED: {names}")
    sys.exit(BROKEN if any(c.status == BROKEN for c in failed) else failed[0].status)
