"""Plain-text tables for the console."""

from __future__ import annotations

__all__ = ["attack_table", "paired_table", "rate_text"]


def rate_text(r: dict | None) -> str:
    """``42.0% [35.1–49.2]`` for a Wilson-rated dict, ``n/a`` when empty."""
    if not r or r.get("value") is None:
        return "n/a"
    return f"{r['value']:.1%} [{r['low']:.0%}–{r['high']:.0%}]"


def describe(verdict: dict, name: str) -> str:
    """``erasure (hit when ...)`` from a verdict holding the criterion's thresholds."""
    from mri_audit.fnaf.criteria import make_criterion

    keys = ("margin", "min_recovery", "threshold", "ip_epsilon")
    try:
        rule = make_criterion(name, **{k: verdict[k] for k in keys if k in verdict})
    except ValueError:
        return name
    return f"{name} ({rule.describe()})"


def attack_table(results: dict) -> str:
    """Clean metrics and the attack table of a results dict."""
    mw = max([len("model")] + [len(m) for m in results["clean"]]) + 2
    lines = [f"{'model':<{mw}}{'SSIM':>8}{'NMSE':>10}{'PSNR':>8}"]
    for model, m in results["clean"].items():
        lines.append(f"{model:<{mw}}{m['ssim']:8.4f}{m['nmse']:10.5f}{m['psnr']:8.2f}")
    lines.append("")
    crit = next(
        (a.get("criterion") for by in results["attacks"].values() for a in by.values()), None
    )
    control = crit == "paper"
    if crit:
        lines.append(f"criterion: {describe(results.get('verdict') or {}, crit)}")
    head = f"{'model':<{mw}}{'attack':<12}{'attack rate':>22}{'admissible':>22}"
    head += f"{'control':>22}" if control else ""
    tail = f"{'mean r':>9}{'mean r0':>9}{'mean e':>9}" + (f"{'mean L':>11}" if control else "")
    lines += [head + tail, "-" * (len(head) + len(tail))]
    for model, attacks in results["attacks"].items():
        for attack, a in attacks.items():
            if a.get("kind", "fnaf") != "fnaf":
                s0, s1 = a.get("ssim_clean", {}), a.get("ssim_adv", {})
                lines.append(
                    f"{model:<{mw}}{attack:<12}  SSIM {s0.get('mean') or 0:.4f} -> "
                    f"{s1.get('mean') or 0:.4f} under k-space noise"
                )
                continue
            line = (
                f"{model:<{mw}}{attack:<12}{rate_text(a['attack_rate']):>22}"
                f"{rate_text(a['ip_acceptance']):>22}"
            )
            if control:
                line += f"{rate_text(a.get('control_rate')):>22}"
            for q in ("r", "r0", "e"):
                mean = (a.get(q) or {}).get("mean")
                line += f"{(f'{mean:.3f}' if mean is not None else 'n/a'):>9}"
            if control:
                mean = (a.get("loss") or {}).get("mean")
                line += f"{(f'{mean:.2e}' if mean is not None else 'n/a'):>11}"
            lines.append(line)
    lines += paired_table(results.get("paired") or [])
    return "\n".join(lines)


def paired_table(paired: list[dict]) -> list[str]:
    """Console lines of the paired comparisons (none for a single model)."""
    if not paired:
        return []
    wa = max(len("model A"), *(len(p["a"]) for p in paired)) + 2
    wb = max(len("model B"), *(len(p["b"]) for p in paired)) + 2
    head = f"{'attack':<12}{'model A':<{wa}}{'model B':<{wb}}{'slices':>7}{'both':>6}"
    head += f"{'A only':>8}{'B only':>8}{'neither':>9}{'McNemar p':>11}"
    out = ["", "paired comparisons (the same slices; exact McNemar test on the discordant ones)"]
    out += [head, "-" * len(head)]
    for p in paired:
        out.append(
            f"{p['attack']:<12}{p['a']:<{wa}}{p['b']:<{wb}}{p['slices']:>7}{p['both']:>6}"
            f"{p['a_only']:>8}{p['b_only']:>8}{p['neither']:>9}{p['p_value']:>11.3g}"
        )
    return out
