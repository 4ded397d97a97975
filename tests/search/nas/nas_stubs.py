"""A stub evaluator for search tests: instant, deterministic, with an accuracy-latency trade-off.

Accuracy grows with log MACs and is bonused by swish and SE, latency grows with MACs and is charged for
swish and SE, so the reward has a real optimum in the middle. Environment variables make it log every
evaluation to a file (EFFX_STUB_LOG), sleep per candidate (EFFX_STUB_SLEEP), fail on candidates whose
architecture hash starts with one of the given characters (EFFX_STUB_FAIL) and find the disk full while a file exists
(EFFX_STUB_DISK_FULL: as a checkpoint that cannot be written fails).
"""

from __future__ import annotations

import errno
import math
import os
import time

from training.arch.plan import expand


class StubEvaluator:
    latency_source = "stub"

    def __init__(self, config, work_dir) -> None:
        self.log = os.environ.get("EFFX_STUB_LOG")
        self.sleep = float(os.environ.get("EFFX_STUB_SLEEP", "0"))
        self.fail = os.environ.get("EFFX_STUB_FAIL", "")

    def latency(self, spec) -> float:
        macs = expand(spec).macs
        swish = sum(1 for s in spec.stages if (s.activation or spec.activation) == "swish")
        se = sum(1 for s in spec.stages if s.se_ratio)
        return macs / 2e6 * (1 + 0.03 * swish + 0.02 * se)

    def accuracy(self, spec) -> float:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {spec.name}\n")
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail and spec.arch_hash()[0] in self.fail:
            raise RuntimeError(f"stub failure on {spec.arch_hash()}")
        full = os.environ.get("EFFX_STUB_DISK_FULL")
        if full and os.path.exists(full):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "checkpoint-best.safetensors")
            except OSError as error:
                raise ValueError(f"cannot write the best checkpoint: {error.strerror}") from None
        macs = expand(spec).macs
        swish = sum(1 for s in spec.stages if (s.activation or spec.activation) == "swish")
        se = sum(1 for s in spec.stages if s.se_ratio)
        return min(0.95, 0.05 * math.log(macs) + 0.004 * swish + 0.003 * se)


class NoisyStubEvaluator(StubEvaluator):
    """The stub, with a seed noise of known size: seed s adds NOISE * (+1, -1, +2, ...)[s] to its top-1."""

    NOISE = 0.01

    def accuracy_spread(self, spec, repeats: int):
        from search.noise import Spread

        base = StubEvaluator.accuracy(self, spec)
        return Spread(tuple(base + self.NOISE * (0, 1, -1, 2, -2)[seed % 5] for seed in range(repeats)))

    def latency_spread(self, specs, rounds: int):
        """Side-by-side timings: each spec's latency, 1% slower in every second round (the machine's load moving)."""
        from search.noise import Spread

        return [Spread(tuple(self.latency(spec) * (1.0 + 0.01 * (r % 2)) for r in range(rounds))) for spec in specs]
