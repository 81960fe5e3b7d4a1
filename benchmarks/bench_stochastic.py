"""Stochastic audit cost: an audit with ``--samples N`` vs N x the deterministic twin's audit.

A stochastic reconstructor (DESIGN §3) is audited over its randomness: every model pass runs
``N`` times under keyed noise (``samples=N``) and each attack's picks are re-scored once more on
fresh noise (the confirmation). This script audits, with :func:`mri_audit.audit` on the same
built-in phantom slices, attacks (``fnaf-rs`` and a few ``fnaf-pgd`` steps) and candidates:

* **generator model**: a small image-domain conv net whose ``forward(x, generator=None)`` adds
  noise drawn per item from its generator (``mri_audit_stochastic = True``; it stays batched),
  against the same net with the noise switched off (``noise=False``) at the same batch size;
* **per-item model**: the same net drawing its noise with ``torch.randn_like`` (no
  ``generator=``, so every item runs alone under torch's seeded global generator), against its
  deterministic twin audited at ``batch_size=1`` (the fair floor for a model run one at a time).

For each it prints the wall time of each audit (best of ``--repeats``, the runs alternating so a
slow spell of the shared machine hits every figure alike), the ratio stochastic / (N x
deterministic) (target: at most 1.1x), and the model-pass accounting: forward calls and images
per phase of the audit, counted with a forward hook (the dry run, the clean reconstructions, the
search's candidates, ``fnaf-pgd``'s gradient steps, the report's example panels, and the
confirmation's clean reconstructions and picks, which a deterministic audit does not make).
The time inside the model's ``forward`` (pre/post hooks) and the process's CPU time (best of the
repeats; less disturbed than the wall time by other jobs) are printed beside each wall time.

Run: ``python benchmarks/bench_stochastic.py [--samples 4,8 --volumes 2 --slices 1 --repeats 3]``
(about 3.5 minutes on 2 idle cores with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mri_audit  # noqa: E402
from mri_audit.audit import panels  # noqa: E402
from mri_audit.fnaf.attack import FnafAttack  # noqa: E402
from mri_audit.fnaf.engine import FnafEngine  # noqa: E402

PHASES = ("dry run", "clean", "search", "gradient", "confirm clean", "confirm picks", "report")
"""Where a model pass happens: the model's dry run (loading, behaviour checks), the clean
reconstruction of each slice, the candidates' (and ``fnaf-pgd``'s refined features')
evaluation, ``fnaf-pgd``'s gradient steps (each forward also has a backward), the confirmation
re-score of a stochastic model's picks (its own clean reconstructions, then the picks), and the
report's example panels (the worst cases reconstructed again, every sample)."""


class _ConvNet(nn.Module):
    """``x + body(x + sigma z)``: a residual stack of 3x3 convolutions (image domain).

    Args:
        chans: channels of the hidden layers.
        layers: convolutions (the first and last map 1 <-> ``chans`` channels).
        sigma: noise level (normalised units) added to the input when ``noise``.
        noise: draw noise (stochastic) or not (the deterministic twin).
    """

    mri_audit_input = "image"

    def __init__(self, chans: int = 64, layers: int = 5, sigma: float = 0.05, noise: bool = True):
        super().__init__()
        self.noise, self.sigma = bool(noise), float(sigma)
        self.mri_audit_stochastic = self.noise  # the declaration follows the flag
        mods: list[nn.Module] = [nn.Conv2d(1, chans, 3, padding=1), nn.ReLU()]
        for _ in range(max(0, layers - 2)):
            mods += [nn.Conv2d(chans, chans, 3, padding=1), nn.ReLU()]
        mods.append(nn.Conv2d(chans, 1, 3, padding=1))
        self.body = nn.Sequential(*mods)
        seeded = torch.Generator().manual_seed(0)  # the same weights for both twins
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.5 / (m.in_channels * 9) ** 0.5, generator=seeded)
                nn.init.zeros_(m.bias)

    def _net(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return x + self.body(x if z is None else x + self.sigma * z)


class GeneratorNet(_ConvNet):
    """Noise from per-item generators when given (the audit keeps it batched)."""

    def forward(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        if not self.noise:
            return self._net(x, None)
        if generator is None:
            z = torch.randn_like(x)
        else:
            z = torch.stack(
                [torch.randn(x.shape[1:], generator=g, device=x.device) for g in generator]
            )
        return self._net(x, z)


class PerItemNet(_ConvNet):
    """Noise from torch's global generator (the audit runs it one item at a time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x, torch.randn_like(x) if self.noise else None)


class PassCounter:
    """Forward calls and images per phase of the audit (a forward pre-hook on the model, and
    the phase read from which engine method the pass happens in)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.calls: Counter = Counter()
        self.images: Counter = Counter()

    def reset(self) -> None:
        self.calls, self.images = Counter(), Counter()

    def phase(self) -> str:
        s = self.stack
        if "confirm" in s:
            return "confirm clean" if "clean" in s else "confirm picks"
        for name in ("report", "clean", "gradient", "search"):  # innermost meaning first
            if name in s:
                return name
        return "dry run"

    def hook(self, module, args) -> None:
        ph = self.phase()
        self.calls[ph] += 1
        self.images[ph] += int(args[0].shape[0])

    def snapshot(self) -> dict:
        return {
            "calls": {p: self.calls[p] for p in PHASES},
            "images": {p: self.images[p] for p in PHASES},
        }

    @contextlib.contextmanager
    def labelled(self):
        """The engine's and the attack's methods labelled with their phase (restored after)."""
        targets = [
            (FnafEngine, "clean_samples", "clean"),
            (FnafEngine, "evaluate", "search"),
            (FnafEngine, "scores_with_grad", "gradient"),
            (FnafAttack, "_rescore", "confirm"),
            (panels, "_samples", "report"),
        ]
        saved = [(owner, name, vars(owner)[name]) for owner, name, _ in targets]

        def wrap(fn, label):
            def wrapper(*args, **kwargs):
                self.stack.append(label)
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.stack.pop()

            return wrapper

        try:
            for owner, name, label in targets:
                setattr(owner, name, wrap(vars(owner)[name], label))
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


def total(counts: dict) -> int:
    return sum(counts.values())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chans", type=int, default=64, help="conv net channels")
    p.add_argument("--layers", type=int, default=5, help="conv net 3x3 convolutions")
    p.add_argument("--sigma", type=float, default=0.05, help="noise (normalised units)")
    p.add_argument("--samples", default="4,8", help="N: samples per input, comma-separated")
    p.add_argument("--volumes", type=int, default=2, help="built-in phantom volumes")
    p.add_argument("--slices", type=int, default=1, help="central slices per volume")
    p.add_argument("--candidates", type=int, default=11)
    p.add_argument("--pgd-steps", type=int, default=3, help="fnaf-pgd steps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-per-item", action="store_true", help="only the generator model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = [int(s) for s in args.samples.split(",")]
    quiet = logging.getLogger("mri_audit")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the dry run's one-line "is stochastic" notice
    try:
        return _run(args, samples)
    finally:
        quiet.setLevel(level)


def _run(args, samples: list[int]) -> dict:
    common = dict(
        max_volumes=args.volumes,
        max_slices=args.slices,
        attacks=("fnaf-rs", "fnaf-pgd"),
        attack_options={"fnaf-pgd": {"steps": args.pgd_steps}},
        candidates=args.candidates,
        device="cpu",
        seed=0,
    )
    net = dict(chans=args.chans, layers=args.layers, sigma=args.sigma)
    counter = PassCounter()
    timers = {"forward": 0.0}

    def make(cls, noise: bool) -> nn.Module:
        model = cls(noise=noise, **net).eval()
        model.register_forward_pre_hook(counter.hook)
        model.register_forward_pre_hook(lambda m, a: timers.__setitem__("t0", time.perf_counter()))
        model.register_forward_hook(
            lambda m, a, o: timers.__setitem__(
                "forward", timers["forward"] + time.perf_counter() - timers["t0"]
            )
        )
        return model

    # (name, model, audit options): every run is one mri_audit.audit(...) call.
    runs = {"gen det": (make(GeneratorNet, False), {})}
    runs.update({f"gen N={n}": (make(GeneratorNet, True), {"samples": n}) for n in samples})
    if not args.skip_per_item:
        runs["item det b1"] = (make(PerItemNet, False), {"batch_size": 1})
        runs.update({f"item N={n}": (make(PerItemNet, True), {"samples": n}) for n in samples})

    last: dict = {}

    def audit(name: str) -> tuple[float, float]:
        """Wall and CPU seconds (every thread of this process) of one audit."""
        model, options = runs[name]
        counter.reset()
        timers["forward"] = 0.0
        start, cpu = time.perf_counter(), time.process_time()
        result = mri_audit.audit(model, name=name.replace(" ", "-"), **common, **options)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        passes = counter.snapshot()
        if name in last and last[name]["passes"] != passes:
            raise AssertionError(f"{name}: the model passes differ between repeats")
        last[name] = {"passes": passes, "forward_s": timers["forward"], "result": result}
        return elapsed, cpu

    with counter.labelled():
        # Warm-up, not timed: imports and first calls (the report's panels too), once per
        # deterministic twin with the same settings.
        for name in runs:
            if "det" in name:
                audit(name)
        best = dict.fromkeys(runs, float("inf"))
        best_cpu = dict.fromkeys(runs, float("inf"))
        forward = dict.fromkeys(runs, float("inf"))
        for _ in range(args.repeats):
            for name in runs:  # alternating: a slow spell of the machine hits every figure
                t, cpu = audit(name)
                best_cpu[name] = min(best_cpu[name], cpu)
                if t < best[name]:
                    best[name], forward[name] = t, last[name]["forward_s"]

    slices = last["gen det"]["result"].attacks["gen-det"]["fnaf-rs"]["slices"]
    figures: dict = {
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": f"conv net chans={args.chans} layers={args.layers} sigma={args.sigma:g}",
        "size": "160x160 (built-in phantoms)",
        "slices": slices,
        "candidates": args.candidates,
        "attacks": "fnaf-rs, fnaf-pgd",
        "pgd_steps": args.pgd_steps,
        "repeats": args.repeats,
        "samples": samples,
        "seconds": best,
        "forward_seconds": forward,
        "cpu_seconds": best_cpu,
        "passes": {name: last[name]["passes"] for name in runs},
        "ratio": {},
        "cpu_ratio": {},
        "image_ratio": {},
    }
    pairs = [("gen", "gen det")] + ([] if args.skip_per_item else [("item", "item det b1")])
    for kind, det in pairs:
        for n in samples:
            name = f"{kind} N={n}"
            figures["ratio"][name] = best[name] / (n * best[det])
            figures["cpu_ratio"][name] = best_cpu[name] / (n * best_cpu[det])
            det_images = total(last[det]["passes"]["images"])
            figures["image_ratio"][name] = total(last[name]["passes"]["images"]) / (n * det_images)
    _print(figures, pairs, samples)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _print(f: dict, pairs, samples) -> None:
    print(
        f"model {f['model']}, {f['size']}, {f['slices']} slices x {f['candidates']} candidates, "
        f"{f['attacks']} ({f['pgd_steps']} steps), cpu, {f['threads']} threads, torch "
        f"{f['torch']}, best of {f['repeats']}"
    )
    labels = {
        "gen": ("generator model (batched)", "deterministic twin, same batch"),
        "item": ("per-item model (no generator=)", "deterministic twin, batch size 1"),
    }
    for kind, det in pairs:
        title, det_label = labels[kind]
        print(f"  {title}")
        t_det = f["seconds"][det]
        print(
            f"    {det_label:<33} {t_det:7.2f} s  (forward {f['forward_seconds'][det]:6.2f} s, "
            f"cpu {f['cpu_seconds'][det]:6.2f} s)"
        )
        for n in samples:
            name = f"{kind} N={n}"
            t = f["seconds"][name]
            print(
                f"    {'stochastic, N=' + str(n):<33} {t:7.2f} s  (forward "
                f"{f['forward_seconds'][name]:6.2f} s, cpu {f['cpu_seconds'][name]:6.2f} s)  "
                f"{n} x deterministic {n * t_det:7.2f} s: ratio {f['ratio'][name]:.2f}x "
                f"(cpu {f['cpu_ratio'][name]:.2f}x, model images {f['image_ratio'][name]:.2f}x)"
            )
    print("  model passes per audit: forward calls / images (a gradient pass also has a backward)")
    names = [det for _, det in pairs] + [f"{k} N={n}" for k, _ in pairs for n in samples]
    print("    " + f"{'phase':<14}" + "".join(f"{n:>14}" for n in names))
    for ph in (*PHASES, "total"):
        cells = []
        for n in names:
            c, i = f["passes"][n]["calls"], f["passes"][n]["images"]
            calls, images = (total(c), total(i)) if ph == "total" else (c[ph], i[ph])
            cells.append(f"{calls:>6} /{images:>6}")
        print("    " + f"{ph:<14}" + "".join(f"{c:>14}" for c in cells))
    print(
        "  images per stochastic audit = N x the deterministic audit's (every input once per "
        "sample) + the confirmation's - the dry run's (N-1) x (done once):"
    )
    for kind, det_name in pairs:
        det = f["passes"][det_name]["images"]
        for n in samples:
            st = f["passes"][f"{kind} N={n}"]["images"]
            unscaled = [
                ph for ph in ("clean", "search", "gradient", "report") if st[ph] != n * det[ph]
            ]
            confirm = st["confirm clean"] + st["confirm picks"]
            floor = n * total(det)
            once = n * det["dry run"] - st["dry run"]
            print(
                f"    {kind} N={n}: {total(st)} = {n} x {total(det)} + {confirm} confirmation "
                f"({st['confirm clean']} clean reconstructions, {st['confirm picks']} picks: "
                f"+{confirm / floor:.0%}) - {once} dry run (its {st['dry run']} images once)"
                + (f"; not N x: {', '.join(unscaled)}" if unscaled else "")
            )


if __name__ == "__main__":
    main()
