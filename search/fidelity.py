"""Whether a proxy ranks candidates as the measurement it stands for does (here: longer training of the same models).

A proxy's seed noise (search/noise.py) says whether its own margins are real; fidelity says whether they point the
same way as what the proxy replaces. A short run can rank models consistently and still wrongly: deeper nets train
more slowly, so a few epochs can put them behind models they beat when trained to the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def kendall_tau(proxy: Sequence[float], target: Sequence[float]) -> float | None:
    """Kendall's tau-a of two scorings of the same candidates: (concordant - discordant pairs) / all pairs, a tie in
    either counting as neither. 1: the same order; 0: unrelated; -1: reversed. None with fewer than two candidates."""
    if len(proxy) != len(target):
        raise ValueError(f"two scorings of the same candidates, not {len(proxy)} and {len(target)} scores")
    pairs = list(itertools.combinations(range(len(proxy)), 2))
    if not pairs:
        return None
    agreement = sum(_sign(proxy[i] - proxy[j]) * _sign(target[i] - target[j]) for i, j in pairs)
    return agreement / len(pairs)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)
