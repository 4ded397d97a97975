"""The two measurements a search needs: proxy accuracy (short training) and latency on this machine.

Both are cached, so a search that is killed and started again re-uses every finished candidate: proxy
training checkpoints into one folder per (architecture, resolution) and resumes there; latency goes
through the latency store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from effx_serve.latency_store import LatencyStore
from effx_serve.measure import Machine, measure_spec
from training.spec import ModelSpec


@dataclass
class ProxyAccuracy:
    """Validation top-1 after a short training run (`epochs` on every `stride`-th training image)."""

    data: Path
    work_dir: Path
    epochs: int = 2
    batch_size: int = 64
    stride: int = 1  # train on every stride-th image: a deterministic subset
    progress: bool = False
    results: dict[str, float] = field(default_factory=dict)

    def __call__(self, spec: ModelSpec) -> float:
        from torch.utils.data import Subset

        from training import data
        from training.recipe import Recipe
        from training.train import train

        key = f"{spec.arch_hash()}-r{spec.resolution}"
        if key in self.results:
            return self.results[key]
        train_set = data.ImageFolder(self.data, "train", data.train_transform(spec.resolution))
        val_set = data.ImageFolder(self.data, "val", data.eval_transform(spec.resolution))
        if self.stride > 1:
            train_set = Subset(train_set, range(0, len(train_set), self.stride))
        # Short runs: BN statistics must settle within a few hundred steps (the reference's 0.01 is for long runs).
        spec = spec.with_(num_classes=len(val_set.classes), bn_momentum=0.1)
        recipe = Recipe(epochs=self.epochs, batch_size=self.batch_size, warmup_epochs=min(1.0, self.epochs / 3), num_workers=0)
        metrics = train(spec, train_set, val_set, recipe, self.work_dir / key, data.dataset_fingerprint(self.data), resume=True,
                        progress=self.progress, log=lambda line: None)
        self.results[key] = float(metrics["ema_top1"])
        return self.results[key]


@dataclass
class MeasuredLatency:
    """p50 latency in ms on this machine at one batch size, through the latency store."""

    machine: Machine
    store: LatencyStore
    runtime: str = "onnxruntime"
    batch: int = 1

    def __call__(self, spec: ModelSpec) -> float:
        record, _ = measure_spec(spec, spec.resolution, self.batch, self.runtime, self.machine, self.store)
        return record.p50_ms
