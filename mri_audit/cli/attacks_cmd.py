"""``mri-audit attacks``: the registered attacks and their parameters."""

from __future__ import annotations

import click

from mri_audit.fnaf.registry import attack_parameters, available_attacks, load_attack


@click.command("attacks")
def attacks() -> None:
    """List the registered attacks, their parameters and defaults."""
    for name, entry in available_attacks().items():
        cls = load_attack(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{name}  ({entry.value})")
        if summary:
            click.echo(f"    {summary}")
        params = attack_parameters(cls)
        width = max((len(k) for k in params), default=0)
        for key, default in params.items():
            click.echo(f"    {key:<{width}} = {default!r}")
    click.echo(
        "\nrun sets the shared ones with its own flags (--candidates, --feature-steps, "
        "--feature,\n--window, --criterion, --margin, --min-recovery, --threshold, --ip-epsilon, "
        "--seed, --batch-size)\nand any other with "
        "--attack-param ATTACK.KEY=VALUE, e.g. --attack-param fnaf-pgd.steps=20."
    )
