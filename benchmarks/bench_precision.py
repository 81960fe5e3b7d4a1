"""Does ``--precision bf16`` (or ``fp16``) pay on this machine? The model's forward in reduced
precision (autocast, as the candidate search runs it) against fp32, same inputs, same run.

On a CPU, ``mri-audit run --precision bf16`` warns when the CPU has no native bf16 support
(emulated bf16 is slower than fp32); this measures the ratio behind that choice.

Run: ``python benchmarks/bench_precision.py [--chans 32 --size 320 --batch 8 --device cpu]``.
Prints seconds per batch for fp32, bf16 and fp16, and each ratio to fp32 (below 1: faster).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _unet(chans: int) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("example_unet", ROOT / "examples" / "unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet(chans=chans).eval()


def _time(model, x, context, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(2):  # warm-up (kernel selection, caches)
            with context():
                model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            with context():
                model(x)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chans", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = _unet(args.chans).to(device)
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    out = {"device": str(device), "chans": args.chans, "size": args.size, "batch": args.batch}
    if device.type == "cpu":
        out["native_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        out["native_fp16"] = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    fp32 = _time(model, x, contextlib.nullcontext, args.repeats)
    out["fp32_s"] = round(fp32, 4)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        seconds = _time(
            model, x, lambda d=dtype: torch.autocast(device.type, dtype=d), args.repeats
        )
        out[f"{name}_s"] = round(seconds, 4)
        out[f"{name}_vs_fp32"] = round(seconds / fp32, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
