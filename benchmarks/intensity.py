"""Operational intensity of EfficientNet-B0 and EfficientNet-X-B0, beside the paper's Table 3.

    .venv/bin/python benchmarks/intensity.py [--hardware nvidia-h200] [--json]

Prints I = W/Q per batch and precision, with every layer counted (ours: convolutions plus the
memory-only SE pool/scale and residual adds) and with the convolution-like layers alone, and the
X-B0 / B0 ratio. The paper gives 19.7 (B0) and 63.8 (X-B0) without naming batch or precision.
"""

from __future__ import annotations

import argparse
import json

from effx_serve.cli.common import run_script
from effx_serve.hardware.ceilings import get_hardware
from effx_serve.perf.roofline import analyze
from training.arch.presets import PRESETS

PAPER = {"efficientnet-b0": 19.7, "efficientnet-x-b0": 63.8}


def rows(hardware_id: str) -> list[dict]:
    hardware = get_hardware(hardware_id)
    out = []
    for precision in ("bf16", "fp32"):
        if precision not in hardware.peak:
            continue
        for batch in (1, 8, 128):
            row = {"hardware": hardware.id, "precision": precision, "batch": batch}
            for name in PAPER:
                result = analyze(PRESETS[name], hardware, batch, precision)
                compute = [p for p in result.layers if p.flops > 0]
                row[name] = result.intensity
                row[f"{name}/conv-only"] = sum(p.flops for p in compute) / sum(p.bytes for p in compute)
                row[f"{name}/ms"] = result.predicted_ms
            row["ratio"] = row["efficientnet-x-b0"] / row["efficientnet-b0"]
            row["ratio/conv-only"] = row["efficientnet-x-b0/conv-only"] / row["efficientnet-b0/conv-only"]
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware", default="nvidia-h200")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = rows(args.hardware)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"paper Table 3: B0 I={PAPER['efficientnet-b0']}, X-B0 I={PAPER['efficientnet-x-b0']} (ratio {63.8 / 19.7:.2f})")
    print(f"{'precision':>9} {'batch':>5} | {'B0 I':>6} {'X-B0 I':>7} {'ratio':>5} | conv-only: {'B0 I':>6} {'X-B0 I':>7} {'ratio':>5} | {'B0 ms':>7} {'X-B0 ms':>7}")
    for r in table:
        print(f"{r['precision']:>9} {r['batch']:>5} | {r['efficientnet-b0']:6.1f} {r['efficientnet-x-b0']:7.1f} {r['ratio']:5.2f} | "
              f"           {r['efficientnet-b0/conv-only']:6.1f} {r['efficientnet-x-b0/conv-only']:7.1f} {r['ratio/conv-only']:5.2f} | "
              f"{r['efficientnet-b0/ms']:7.3f} {r['efficientnet-x-b0/ms']:7.3f}")


if __name__ == "__main__":
    run_script(main)
