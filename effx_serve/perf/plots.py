"""PNG pictures: the roofline with models (and optionally their layers) placed on it; latency against batch."""

from __future__ import annotations

from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.core.plots import pyplot, save_figure
from effx_serve.hardware.table import Hardware
from effx_serve.perf.roofline import ModelRoofline, attainable


def plot_roofline(results: list[ModelRoofline], hardware: Hardware, precision: str, path: str | Path, layers: bool = True) -> Path:
    plt = pyplot()
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--plot {path} is a directory; give a file name such as {path / 'roofline.png'}")
    points = [p for r in results for p in (r.layers if layers else []) if p.flops > 0]
    intensities = [r.intensity for r in results] + [p.intensity for p in points]
    low, high = min(intensities + [1.0]) / 2, max(intensities + [hardware.ridge(precision) * 4]) * 2
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.loglog(xs, [attainable(x, hardware, precision) / 1e12 for x in xs], color="black", label=f"{hardware.name} {precision} roofline")
    ax.axvline(hardware.ridge(precision), color="grey", linestyle=":", label=f"ridge {hardware.ridge(precision):.0f} FLOP/B")
    for index, result in enumerate(results):
        colour = f"C{index % 10}"
        if layers:
            mine = [p for p in result.layers if p.flops > 0]
            ax.scatter([p.intensity for p in mine], [p.flops / p.seconds / 1e12 for p in mine], s=8, alpha=0.35, color=colour)
        achieved = result.flops / (result.predicted_ms / 1e3) / 1e12
        ax.scatter([result.intensity], [achieved], s=80, marker="*", color=colour, edgecolor="black",
                   label=f"{result.name}: I={result.intensity:.1f}, {result.predicted_ms:.3g} ms")
    ax.set_xlabel("operational intensity (FLOP/byte)")
    ax.set_ylabel("attainable TFLOP/s")
    batch = results[0].batch if results else 1
    ax.set_title(f"Roofline, batch {batch}, {precision} (stars: whole model; dots: layers)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(plt, fig, path)


def plot_latency(rows: list[dict], title: str, path: str | Path) -> Path:
    """Measured (solid) and predicted (dashed) latency against batch size, one colour per model."""
    plt = pyplot()
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--plot {path} is a directory; give a file name such as {path / 'latency.png'}")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for index, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["batch"])
        batches = [r["batch"] for r in mine]
        ax.plot(batches, [r["measured_ms"] for r in mine], "o-", color=f"C{index % 10}", label=f"{name} measured")
        ax.plot(batches, [r["predicted_ms"] for r in mine], "x--", color=f"C{index % 10}", label=f"{name} predicted")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency p50 (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)
