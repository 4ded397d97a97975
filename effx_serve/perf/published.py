"""The paper's Table 3 inference latencies (TPUv3 / GPUv100, ms) as `published` latency records.

For hardware this project cannot run, these are the only latency figures there are. The paper's text does
not state the batch size or precision of the measurement, so the records carry batch 0 ("not stated") and
precision "unstated"; `details` says so and names the source. Each row is attached to the preset whose
parameter and FLOP counts Table 3 lists (for EfficientNet-X: the `efficientnet-x-b*` presets, see
reference/efficientnet-x-facts.md section 5), at the model's own resolution.
"""

from __future__ import annotations

from effx_serve.perf.latency_store import LatencyKey, LatencyRecord, LatencyStore
from training.arch.presets import PRESETS

SOURCE = "Li et al., 'Searching for Fast Model Families on Datacenter Accelerators', CVPR 2021, Table 3"
UNSTATED_BATCH = 0
UNSTATED_PRECISION = "unstated"
RUNTIME = "paper"

# model -> (TPUv3 ms, GPUv100 ms)
TABLE3_MS = {
    "efficientnet-b0": (13.4, 38.1),
    "efficientnet-b1": (22.3, 60.5),
    "efficientnet-b2": (29.8, 77.2),
    "efficientnet-b3": (48.1, 128.8),
    "efficientnet-b4": (102.6, 310.7),
    "efficientnet-b5": (192.5, 640.1),
    "efficientnet-b6": (334.2, 1040.6),
    "efficientnet-b7": (621.4, 1471.3),
    "efficientnet-x-b0": (8.71, 22.5),
    "efficientnet-x-b1": (13.6, 34.4),
    "efficientnet-x-b2": (15.7, 45.5),
    "efficientnet-x-b3": (31.9, 66.6),
    "efficientnet-x-b4": (64.9, 149.2),
    "efficientnet-x-b5": (125.9, 290.2),
    "efficientnet-x-b6": (237.6, 467.2),
    "efficientnet-x-b7": (433.9, 847.7),
}
HARDWARE = ("tpu-v3", "nvidia-v100")


def published_records() -> list[LatencyRecord]:
    records = []
    for name, figures in TABLE3_MS.items():
        spec = PRESETS[name]
        for hardware_id, ms in zip(HARDWARE, figures, strict=True):
            key = LatencyKey(spec.arch_hash(), hardware_id, RUNTIME, UNSTATED_PRECISION, UNSTATED_BATCH, spec.resolution)
            details = {"source": SOURCE, "batch": "not stated in the paper", "precision": "not stated in the paper",
                       "statistic": "one figure per model; stored as p50 = p90 = p99"}
            records.append(LatencyRecord(key, "published", ms, ms, ms, 0, 0.0, model=name, details=details, recorded_at=0.0))
    return records


def ensure_published(store: LatencyStore) -> int:
    """Put the Table 3 records into `store` (idempotent). Returns how many there are."""
    records = published_records()
    for record in records:
        store.put(record)
    return len(records)
