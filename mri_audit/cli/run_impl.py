"""The work behind ``mri-audit run``: the parsed options into one :func:`mri_audit.audit` call,
then the attack table, the warnings and the verdict on the console (kept apart so the CLI module
imports fast)."""

from __future__ import annotations

import click

__all__ = ["execute", "show_result"]


def execute(opts: dict, command_line: list[str]) -> int:
    """Run the audit described by the parsed options; returns the exit status."""
    import time

    from mri_audit.audit.api import AuditInterrupted, audit
    from mri_audit.cli import EXIT_INTERRUPTED, on_interrupt

    started = time.perf_counter()
    entries = opts["models"]
    try:
        result = audit(
            entries[0],
            compare=entries[1:],
            normalize=opts["normalize"],
            data=opts["data"],
            max_volumes=opts["max_volumes"],
            max_slices=opts["max_slices"],
            accel=opts["accel"],
            center_fraction=opts["center_fraction"],
            mask_type=opts["mask_type"],
            attacks=opts["attacks"],
            attack_options=opts["attack_options"],
            criterion=opts["criterion"],
            margin=opts["margin"],
            min_recovery=opts["min_recovery"],
            threshold=opts["threshold"],
            ip_epsilon=opts["ip_epsilon"],
            candidates=opts["candidates"],
            feature=opts["feature"],
            feature_steps=opts["feature_steps"],
            feature_size=opts["feature_size"],
            feature_width=opts["feature_width"],
            window=opts["window"],
            insert=opts["insert"],
            seed=opts["seed"],
            device=opts["device"],
            batch_size=opts["batch_size"],
            precision=opts["precision"],
            compile_model=opts["compile_model"],
            max_attack_rate=opts["max_attack_rate"],
            recovery_map=opts["map"],
            samples=opts["samples"],
            out=opts["out"],
            resume=opts["resume"],
            force=opts["force"],
            sign=opts["sign"],
            progress=not opts["no_progress"],
            command_line=command_line,
            on_stage=on_interrupt,
        )
    except AuditInterrupted as stop:
        if stop.out is not None:
            click.echo(
                f"\nInterrupted: {stop.saved} records are saved in {stop.out}; "
                "run the same command with --resume to continue.",
                err=True,
            )
        return EXIT_INTERRUPTED
    show_result(result, time.perf_counter() - started)
    return result.exit_code


def show_result(result, command_seconds: float | None = None) -> None:
    """The attack table, the warnings, the files written and the verdict (rank 0 only)."""
    from mri_audit.report.tables import attack_table

    if result.out is None:  # another rank of a torchrun job: rank 0 speaks
        return
    click.echo(attack_table(result.results))
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    elapsed = result.results["elapsed_seconds"]
    timing = f"attacks {elapsed:.1f} s"
    if command_seconds is not None:
        timing += f", the whole command {command_seconds:.1f} s"
    signed = ", signature.json" if (result.out / "signature.json").is_file() else ""
    click.echo(
        f"\nWrote {result.out}/results.json, records.csv, records.jsonl, report.html{signed} "
        f"({timing}); check them with mri-audit verify {result.out}"
    )
    verdict = result.verdict
    status = verdict.get("status", "none")
    if status != "none":
        click.echo(f"{status.upper()}: {verdict['reason']}", err=status != "pass")
