"""The paper's Table 2 coefficients through `search.scaling.lacs.family`, beside the paper's Table 6 and the reference presets.

    .venv/bin/python benchmarks/scaling_tables.py

Prints one Markdown table per coefficient set (docs/scaling.md shows them and explains the differences).
Table 6 gives (depth, resolution) per member; its depth is the base's 16 blocks times the depth multiplier.
"""

from __future__ import annotations

from effx_serve.cli.common import run_script
from search.scaling.lacs import DEFAULT_PHIS, PAPER_COEFFICIENTS, Coefficients, family, member_row
from training.arch.presets import PRESETS

# The paper's Table 6: (depth, resolution) of X-B0..B7 per scaling.
TABLE6 = {
    "gpu": [(16, 224), (17, 229), (20, 241), (25, 258), (36, 289), (49, 317), (62, 343), (79, 368)],
    "tpu": [(16, 224), (17, 229), (20, 243), (26, 263), (38, 298), (52, 331), (68, 361), (87, 391)],
    "accuracy-only": [(16, 224), (17, 240), (19, 260), (22, 300), (28, 380), (35, 456), (41, 528), (49, 600)],
}
REFERENCE_FAMILY = {"gpu": "efficientnet-x-gpu", "tpu": "efficientnet-x-tpu", "accuracy-only": "efficientnet-x"}


def main() -> None:
    base = PRESETS["efficientnet-x-b0"]
    for key, coefficients in PAPER_COEFFICIENTS.items():
        print(f"\n{key}: (alpha, beta, gamma) = {coefficients}, phi = {', '.join(map(str, DEFAULT_PHIS))}\n")
        print("| member | ours: depth, width, res | ours: blocks | 16 x depth | Table 6 (depth, res) | reference: depth, width, res | reference blocks |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        members = family(base, Coefficients(*coefficients))
        for i, (member, phi) in enumerate(zip(members, DEFAULT_PHIS, strict=True)):
            ours, reference = member_row(member, phi), PRESETS[f"{REFERENCE_FAMILY[key]}-b{i}"]
            print(f"| b{i} | {ours['depth']:g}, {ours['width']:g}, {ours['resolution']} | {ours['blocks']} | {16 * ours['depth']:.1f} "
                  f"| {TABLE6[key][i]} | {reference.depth:g}, {reference.width:g}, {reference.resolution} | {member_row(reference)['blocks']} |")


if __name__ == "__main__":
    run_script(main)
