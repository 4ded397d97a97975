"""The two measurements a search needs: proxy accuracy (short training) and latency on this machine.

An evaluator is any object with `accuracy(spec) -> top-1` and `latency(spec) -> ms` plus a
`latency_source` label; `ProxyEvaluator` is the default and `--evaluator module:factory` plugs in another.

Both are cached, so a search that is killed and started again re-uses every finished candidate: proxy
training checkpoints into one folder per (architecture, resolution) and resumes there; latency goes
through the latency store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from effx_serve.core.errors import UserError
from effx_serve.hardware.machine import Machine, this_machine
from effx_serve.perf.latency_model import predictor
from effx_serve.perf.latency_store import LatencyStore
from effx_serve.perf.measure import default_runtime, measure_spec, time_in_turn
from search.noise import Spread
from training.arch.spec import ModelSpec
from training.recipe import Recipe

SHORT_RUN_CROP_SCALE = (0.5, 1.0)


def short_run(spec: ModelSpec, data: Path, out_dir: Path, epochs: int, fingerprint: str, batch_size: int = 64, stride: int = 1,
              progress: bool = False, seed: int = 0, zero_init_residual: bool = False, lr_scale: float = 1.0) -> tuple[ModelSpec, dict]:
    """Train `spec` briefly on an ImageFolder dataset into `out_dir` (resuming there). Returns (trained spec, metrics).

    Every `stride`-th training image is used (a deterministic subset). A short run is not the reference
    recipe cut short: `Recipe.small_data` (AdamW) learns in a few epochs where RMSProp barely starts,
    random crops keep at least half the image (ImageNet's 8% pays only over long training and, on the
    demo data, crops the object away), and BN momentum is 0.1 so the statistics settle within a few
    hundred steps (the reference's 0.01 is for long runs). No dropout or drop-connect: a few epochs do not
    overfit, and the regularisers only slow learning (demo base, 4 epochs: 22% top-1 with, 28% without).
    `zero_init_residual`: every residual block starts as the identity (`Recipe.zero_init_residual`). `lr_scale`
    multiplies the recipe's learning rate (an experiment's knob: whether the rate is what ranks the models).
    """
    from torch.utils.data import Subset

    from training import data as datasets
    from training.loop import train

    train_set = datasets.ImageFolder(data, "train", datasets.train_transform(spec.resolution, scale=SHORT_RUN_CROP_SCALE))
    val_set = datasets.ImageFolder(data, "val", datasets.eval_transform(spec.resolution))
    if stride > 1:
        train_set = Subset(train_set, range(0, len(train_set), stride))
    spec = spec.with_(num_classes=len(val_set.classes), bn_momentum=0.1, dropout=0.0, drop_connect=0.0)
    recipe = Recipe.small_data(epochs=epochs, batch_size=batch_size, warmup_epochs=min(1.0, epochs / 3), num_workers=0, seed=seed,
                               zero_init_residual=zero_init_residual)
    recipe = recipe.with_(base_lr=recipe.base_lr * lr_scale)
    metrics = train(spec, train_set, val_set, recipe, out_dir, fingerprint, resume=True, progress=progress, log=lambda line: None)
    return spec, metrics


@dataclass
class ProxyAccuracy:
    """Validation top-1 after a short training run (`epochs` on every `stride`-th training image).

    `zero_init_residual` starts each residual block as the identity. Off, as the demo family's members train. On, six
    epochs no longer rank twice the demo base's depth below it, but they rank width far above what the members' 24
    epochs deliver: a demo family built with it was not rising (docs/scaling.md, `benchmarks/proxy_signal.py --init both`)."""

    data: Path
    work_dir: Path
    epochs: int = 2
    batch_size: int = 64
    stride: int = 1  # train on every stride-th image: a deterministic subset
    progress: bool = False
    zero_init_residual: bool = False
    lr_scale: float = 1.0  # times the proxy recipe's learning rate
    results: dict[str, float] = field(default_factory=dict)
    fingerprint: str | None = None  # of `data`, computed on first use

    def __call__(self, spec: ModelSpec, seed: int = 0) -> float:
        from training.data import dataset_fingerprint

        key = self.folder(spec, seed)
        if key not in self.results:
            self.fingerprint = self.fingerprint or dataset_fingerprint(self.data)
            _, metrics = short_run(spec, self.data, self.work_dir / key, self.epochs, self.fingerprint, self.batch_size, self.stride,
                                   self.progress, seed, self.zero_init_residual, self.lr_scale)
            self.results[key] = float(metrics["ema_top1"])
        return self.results[key]

    def folder(self, spec: ModelSpec, seed: int = 0) -> str:
        """The run's folder under `work_dir`. Everything that changes what a run measures is in its name: a training run
        resumes whatever its folder holds, and one trained longer, or on another subset, or with residual blocks starting
        as the identity ("-zi"), or at another learning rate, would otherwise be reused or continued as this one."""
        return (f"{spec.arch_hash()}-r{spec.resolution}-e{self.epochs}" + (f"-s{self.stride}" if self.stride != 1 else "")
                + ("-zi" if self.zero_init_residual else "") + (f"-lr{self.lr_scale:g}" if self.lr_scale != 1 else "")
                + (f"-seed{seed}" if seed else ""))

    def spread(self, spec: ModelSpec, repeats: int) -> Spread:
        """Top-1 of `repeats` runs of `spec` with seeds 0..repeats-1 (seed 0 is the run a search already made)."""
        return Spread(tuple(self(spec, seed) for seed in range(repeats)))


@dataclass
class MeasuredLatency:
    """p50 latency in ms on this machine at one batch size, through the latency store."""

    machine: Machine
    store: LatencyStore
    runtime: str = ""  # "": this machine's default
    batch: int = 1

    def __post_init__(self) -> None:
        self.runtime = self.runtime or default_runtime(self.machine.hardware.kind)

    def __call__(self, spec: ModelSpec) -> float:
        record, _ = measure_spec(spec, spec.resolution, self.batch, self.runtime, self.machine, self.store)
        return record.p50_ms

    def side_by_side(self, specs: Sequence[ModelSpec], rounds: int) -> list[Spread]:
        """Each spec's p50 (ms) timed once per round, the specs in turn within every round (A B A B ...), not stored. The
        store's records may be minutes apart, and a shared machine's load changes in minutes: a decision between two
        close candidates rests on timings taken under the same conditions."""
        taken = time_in_turn([(spec, None) for spec in specs], [self.batch], self.runtime, self.machine, rounds)
        return [Spread(tuple(timing.p50_ms for timing, _ in per_batch[self.batch])) for per_batch in taken]


@dataclass
class PredictedLatency:
    """Latency in ms predicted for this machine: its calibrated latency model, else the ideal roofline."""

    machine: Machine
    runtime: str = ""  # "": this machine's default
    batch: int = 1

    def __post_init__(self) -> None:
        self.runtime = self.runtime or default_runtime(self.machine.hardware.kind)
        self._predict, self.source = predictor(self.machine, self.runtime)

    def __call__(self, spec: ModelSpec) -> float:
        return self._predict(spec, self.batch, spec.resolution)


class ProxyEvaluator:
    """What a search trial measures by default: proxy top-1 (short training) and latency, measured or predicted."""

    def __init__(self, config, work_dir: Path) -> None:
        if not config.data:
            raise UserError("proxy training needs a dataset: give --data DIR")
        self.machine = this_machine()
        self.accuracy = ProxyAccuracy(Path(config.data), work_dir / "proxy", epochs=config.epochs, batch_size=config.batch_size,
                                      stride=config.subset_stride)
        if config.latency == "predicted":
            predicted = PredictedLatency(self.machine, config.runtime, config.latency_batch)
            self._latency, self.latency_source = predicted, f"predicted ({predicted.source})"
        else:
            self._store = LatencyStore()
            self._latency = MeasuredLatency(self.machine, self._store, config.runtime, config.latency_batch)
            self.latency_source = f"measured ({self._latency.runtime}, batch {config.latency_batch})"

    def latency(self, spec: ModelSpec) -> float:
        return self._latency(spec)

    def latency_spread(self, specs: Sequence[ModelSpec], rounds: int) -> list[Spread] | None:
        """The specs timed side by side (MeasuredLatency.side_by_side); None where latency is predicted, not measured."""
        side_by_side = getattr(self._latency, "side_by_side", None)
        return side_by_side(specs, rounds) if side_by_side is not None else None

    def accuracy_spread(self, spec: ModelSpec, repeats: int) -> Spread:
        """Top-1 over seeds 0..repeats-1 (seed 0: the search's own run, cached): what search/nas/verdict.py judges with."""
        return self.accuracy.spread(spec, repeats)


def load_evaluator(reference: str):
    """The evaluator factory named 'module:attribute' (called as factory(config, work_dir)); a clear error if absent."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UserError(f"evaluator '{reference}' must be 'module:factory', such as search.evaluators:ProxyEvaluator")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"evaluator '{reference}': module {module_name} cannot be imported ({error})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UserError(f"evaluator '{reference}': {module_name} has no callable '{attribute}'")
    return factory
