"""`effx-serve build-family`: train every member of a family.json, measure it, and summarise.

Each member trains into `<out>/checkpoints/<member>/` (resumable: a killed run continues from the last
finished epoch of the member it was on); the summary `<out>/family-results.json` lists per member its
params, MACs, measured latency on this machine and validation top-1/top-5, and `<out>/family.png` plots
top-1 against latency (beside the accuracy-only family when `--with-accuracy-only` trains it too). `--demo` runs the whole chain on
the generated demo data: data, a small LACS, and the family, sized to finish in minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from effx_serve.core.fs import write_atomic
from effx_serve.core.plots import optional_pyplot, save_figure
from effx_serve.perf.profiler import SIDE_BY_SIDE_ROUNDS
from search.defaults import describe_estimate, estimate_seconds
from search.evaluators import ProxyAccuracy, short_run
from search.scaling import job as lacs_job
from search.scaling.job import LacsSettings
from search.scaling.lacs import EFFICIENTNET_COEFFICIENTS, Coefficients, scale
from training.arch.family_file import read_family
from training.arch.presets import get_preset
from training.arch.spec import ModelSpec
from training.demo_data import CLASSES, generate_demo_data
from training.errors import SpecError

RESULTS_FILE = "family-results.json"


@dataclass(frozen=True)
class FamilyRange:
    """What a router can trade across a trained family, from its first member to its last.

    A member that is no more accurate, or no slower, than the one before it is out of order: for any SLA
    another member serves it at least as well, so routing never gains from it.
    """

    top1_gain: float  # points, last member minus first
    latency_ratio: float  # last member's batch-1 latency over the first's
    out_of_order: tuple[str, ...]  # e.g. "b2 is not more accurate than b1 (61.0 <= 62.3%)"

    @classmethod
    def of(cls, rows: list[dict]) -> FamilyRange:
        problems = []
        for before, member in zip(rows, rows[1:], strict=False):
            short, previous = member["name"].rsplit("-", 1)[-1], before["name"].rsplit("-", 1)[-1]
            if member["top1"] <= before["top1"]:
                problems.append(f"{short} is not more accurate than {previous} ({100 * member['top1']:.1f} <= {100 * before['top1']:.1f}%)")
            if member["latency_ms"] <= before["latency_ms"]:
                problems.append(f"{short} is not slower than {previous} ({member['latency_ms']:.3f} <= {before['latency_ms']:.3f} ms)")
        first, last = rows[0], rows[-1]
        return cls(100 * (last["top1"] - first["top1"]), last["latency_ms"] / first["latency_ms"], tuple(problems))

    def describe(self) -> str:
        order = "strictly rising in both" if not self.out_of_order else "out of order: " + "; ".join(self.out_of_order)
        return f"top-1 +{self.top1_gain:.1f} points and {self.latency_ratio:.2f}x the latency from first to last member, {order}"

    def misses(self, min_gain: float, min_ratio: float) -> list[str]:
        """The targets this range misses (empty when it meets them all)."""
        missed = list(self.out_of_order)
        if self.top1_gain < min_gain:
            missed.append(f"top-1 gain {self.top1_gain:.1f} < {min_gain:g} points")
        if self.latency_ratio < min_ratio:
            missed.append(f"latency ratio {self.latency_ratio:.2f} < {min_ratio:g}x")
        return missed


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes: a proxy with signal (the base at ~5x chance) and a family worth routing over, on 2 cores.

    The family spans 8x the base's FLOPs (phi 0 to 3) from a 32 px base on 64 px images, so its last member sees
    twice the pixels of its first, and members train 24 epochs: at 8 epochs every member stopped at 58-62% top-1
    (the small ones learn as fast as the large ones early on), at 20 the last was 14 points above the first
    (demo base, 1 seed; docs/training.md). b0 is trained first and served in minutes; the rest take longer.
    """

    images_per_class: int = 240
    image_size: int = 64
    base_resolution: int = 32
    # Two seeds per finalist say whether the winner's margin is inside the seed noise; while it is, a race adds seeds up to 5
    # each: the demo's two closest triplets were 0.038 +- 0.027 of reward apart on 2 seeds, which 5 would resolve.
    lacs: LacsSettings = LacsSettings(grid_step=0.25, tolerance=0.3, fine_step=None, w=-0.3, phis=(0.0, 1.0, 2.0, 3.0), noise_repeats=2,
                                      max_repeats=5)
    val_fraction: float = 0.5  # 120 validation images a class: binomial noise of ~1.4 points at 50% top-1 (48 gave ~2.3)
    # 6 rather than 4: the same ranking of the base's one-dimension variants as 24 epochs of training (Kendall's tau 1.0 for
    # both), at 1.1 points of seed noise against 2.7, for half as much again of LACS's time (benchmarks/proxy_signal.py --full-epochs 24).
    proxy_epochs: int = 6
    proxy_stride: int = 1
    member_epochs: int = 24
    # A family worth routing over (issue 18): the last member this many points more accurate, and this many times slower.
    min_top1_gain: float = 15.0
    min_latency_ratio: float = 3.0


def demo_base(resolution: int) -> ModelSpec:
    """A half-width, shallow EfficientNet-X-B0 at a small input: the demo family's B0.

    Half width rather than less: narrower members run in ~0.2 ms on one CPU thread whatever their size
    (per-operator overhead dominates), so measured latency would not grow across the family.
    """
    return get_preset("efficientnet-x-b0", width=0.5, depth=0.34, resolution=resolution, num_classes=10).with_(name="demo-x")


def _train_members(members: list[dict], data: Path, out: Path, epochs: int, latency_of, say, progress: bool,
                   after_each: Callable[[], None] | None = None) -> list[dict]:
    from training import data as datasets  # torch

    classes = datasets.class_names(data)
    fingerprint = datasets.dataset_fingerprint(data)
    rows = []
    for member in members:
        spec = ModelSpec.from_dict(member["spec"])
        started = time.perf_counter()
        say(f"training {spec.name} ({member['params'] / 1e6:.2f} M params, {spec.resolution} px) for {epochs} epochs")
        checkpoints = out / "checkpoints" / spec.name
        spec, metrics = short_run(spec, data, checkpoints, epochs, fingerprint, progress=progress)
        datasets.write_labels(checkpoints, classes)
        rows.append({"name": spec.name, "phi": member["phi"], "resolution": spec.resolution, "params": member["params"],
                     "macs": member["macs"], "latency_ms": latency_of(spec), "top1": metrics["ema_top1"], "top5": metrics["ema_top5"],
                     "checkpoint": str(checkpoints), "train_seconds": time.perf_counter() - started})
        say(f"  {spec.name}: top-1 {100 * metrics['ema_top1']:.1f}%, {rows[-1]['latency_ms']:.3f} ms")
        if after_each is not None:
            after_each()
    return rows


def _time_together(rows: list[dict], members: list[dict], latency_of, say) -> None:
    """Each row's latency re-taken with the members timed in turn (the median of MeasuredLatency.side_by_side's rounds),
    where the latency source can: taken one by one between trainings, minutes apart, the demo's b2 once measured
    slower than its b3 (3.38 against 3.10 ms; in turn 1.80 against 2.23)."""
    retime = getattr(latency_of, "side_by_side", None)
    if retime is None or len(rows) < 2:
        return
    spreads = retime([ModelSpec.from_dict(member["spec"]) for member in members], SIDE_BY_SIDE_ROUNDS)
    for row, spread in zip(rows, spreads, strict=True):
        row["latency_ms"] = statistics.median(spread.samples)
    say("members timed side by side: " + ", ".join(f"{row['name']} {row['latency_ms']:.3f} ms" for row in rows))


def train_family(family_file: Path, data: Path, out: Path, epochs: int, latency_of: Callable[[ModelSpec], float],
                 say: Callable[[str], None] = print, progress: bool = True, accuracy_only: bool = False,
                 after_each: Callable[[], None] | None = None) -> list[dict]:
    """Train the LACS family (and, with `accuracy_only`, the accuracy-only family beside it); write results and family.png.
    `after_each` runs after each LACS member but the last is trained (a partial repository built from them, say)."""
    family = read_family(family_file)
    members = family["members"]
    rows = _train_members(members[:-1], data, out, epochs, latency_of, say, progress, after_each)
    rows += _train_members(members[-1:], data, out, epochs, latency_of, say, progress)
    compared = []
    if accuracy_only:
        if "accuracy_only" not in family:
            raise SpecError(f"{family_file} has no accuracy-only family to compare with")
        compared = _train_members(family["accuracy_only"]["members"], data, out, epochs, latency_of, say, progress)
    _time_together(rows + compared, members + (family["accuracy_only"]["members"] if compared else []), latency_of, say)
    spread = FamilyRange.of(rows)
    say(f"family: {spread.describe()}")
    write_atomic(out / RESULTS_FILE, json.dumps({"family": str(family_file), "data": str(data), "hardware": family["hardware"],
                                                 "members": rows, "accuracy_only_members": compared,
                                                 "range": {"top1_gain": spread.top1_gain, "latency_ratio": spread.latency_ratio,
                                                           "out_of_order": list(spread.out_of_order)}}, indent=2))
    _plot(rows, compared, family, out / "family.png")
    return rows


def _plot(rows: list[dict], compared: list[dict], family: dict, path: Path) -> None:
    """Validation top-1 against measured latency: the LACS family, and the accuracy-only one when it was trained."""
    plt = optional_pyplot()
    if plt is None:  # no matplotlib: the picture is optional (the plot extra)
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    series = [(rows, "LACS", family["coefficients"], "o-")]
    if compared:
        series.append((compared, "accuracy-only", family["accuracy_only"]["coefficients"], "D--"))
    for members, label, (a, b, g), style in series:
        ax.plot([r["latency_ms"] for r in members], [100 * r["top1"] for r in members], style, label=f"{label} ({a:g}, {b:g}, {g:g})")
        for r in members:
            ax.annotate(r["name"].rsplit("-", 1)[-1], (r["latency_ms"], 100 * r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"latency on {family['hardware']} (ms, p50, batch 1)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("trained family: accuracy against measured latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(plt, fig, path)


def _first_member(base: ModelSpec, settings: DemoSettings, data: Path, out: Path, latency_of, hardware_id: str, say,
                  progress: bool) -> Path:
    """Train b0 before LACS runs (phi 0 is the base whatever coefficients LACS picks) into the checkpoint LACS's family
    will reuse; its family file (coefficients 1, 1, 1 until LACS decides)."""
    ones = Coefficients(1.0, 1.0, 1.0)
    members = lacs_job.family_members(base, ones, settings.lacs.phis[:1], latency_of, f"{base.name}-lacs", say)
    first = out / "first" / lacs_job.FAMILY_FILE
    first.parent.mkdir(parents=True, exist_ok=True)
    lacs_job.write_family(first, hardware_id, ones, members)
    _train_members(members, data, out, settings.member_epochs, latency_of, say, progress)
    return first


def run_demo(out: Path, latency_of: Callable[[ModelSpec], float], hardware_id: str, settings: DemoSettings = DemoSettings(),
             say: Callable[[str], None] = print, progress: bool = True, accuracy_only: bool = False,
             on_members: Callable[[Path, int], None] | None = None) -> list[dict]:
    """The demo family, built end to end into `out`. `on_members(family_file, planned)` is called as members become ready
    (b0 first, before LACS; then after each member), with the family file naming them and the family's planned size."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out} is a file; give a folder")
    started = time.perf_counter()
    data = out / "data"
    summary = generate_demo_data(data, size=settings.images_per_class, image_size=settings.image_size,
                                 val_fraction=settings.val_fraction)
    say(f"demo data: {summary['images']} images in {data}" + (" (reused)" if summary["reused"] else ""))
    accuracy = ProxyAccuracy(data, out / "lacs" / "trials", epochs=settings.proxy_epochs, stride=settings.proxy_stride)
    base, train, val = demo_base(settings.base_resolution), summary["train_per_class"] * len(CLASSES), summary["val_per_class"] * len(CLASSES)
    family_file, planned = out / "lacs" / lacs_job.FAMILY_FILE, len(settings.lacs.phis)
    early = on_members is not None and settings.lacs.phis[0] == 0 and not family_file.exists()
    runs, lacs_seconds = lacs_job.estimate_lacs(base, settings.lacs, train // settings.proxy_stride, val, settings.proxy_epochs)
    # The members' sizes depend on what LACS picks; EfficientNet's rule sizes them for the estimate.
    typical = [scale(base, Coefficients(*EFFICIENTNET_COEFFICIENTS), phi) for phi in settings.lacs.phis]
    member_seconds = [estimate_seconds(spec, train, val, settings.member_epochs, 1) for spec in typical]
    say(f"plan, timed here (finished runs are reused): {f'b0 first, {describe_estimate(member_seconds[0])}, served once trained; ' if early else ''}"
        f"LACS, up to {runs} proxy runs of {settings.proxy_epochs} epochs, {describe_estimate(lacs_seconds)}; {planned} members of "
        f"{settings.member_epochs} epochs, {describe_estimate(sum(member_seconds))}; {describe_estimate(lacs_seconds + sum(member_seconds))} in all")
    if early:
        say("first member: training b0 (the base at phi 0, the same whatever LACS picks) before LACS, to serve it while the rest build")
        on_members(_first_member(base, settings, data, out, latency_of, hardware_id, say, progress), planned)
    say(f"LACS: up to {runs} proxy runs of {settings.proxy_epochs} epochs (fewer when its decisions are clear early)")
    lacs_job.run(base, out / "lacs", accuracy, latency_of, hardware_id, settings.lacs, say)
    say(f"LACS done after {time.perf_counter() - started:.0f} s")
    members = read_family(family_file)["members"]
    seconds = sum(estimate_seconds(ModelSpec.from_dict(m["spec"]), train, val, settings.member_epochs, 1) for m in members)
    say(f"training {len(members)} members for {settings.member_epochs} epochs each: {describe_estimate(seconds)} (timed here)")
    after_each = None if on_members is None else lambda: on_members(family_file, planned)
    rows = train_family(family_file, data, out, settings.member_epochs, latency_of, say, progress, accuracy_only, after_each)
    missed = FamilyRange.of(rows).misses(settings.min_top1_gain, settings.min_latency_ratio)
    say(f"demo family targets (+{settings.min_top1_gain:g} points, {settings.min_latency_ratio:g}x the latency, both strictly rising): "
        + ("met" if not missed else "missed: " + "; ".join(missed)))
    say(f"demo family built in {time.perf_counter() - started:.0f} s")
    return rows
