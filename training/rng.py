"""Random-number-generator states as plain JSON (never pickle), to save in and restore from checkpoints.

Covers what a training step can draw from: torch's CPU generator (dropout, drop-connect, transforms),
the current CUDA device's generator when there is one, Python's `random` and NumPy's legacy global state
(transforms written with either).
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch

from training.errors import SpecError


def _bytes_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _text_to_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text.encode("ascii"), validate=True)), dtype=torch.uint8)


def capture() -> dict[str, Any]:
    """This process's generator states, JSON-serialisable."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": _bytes_to_text(torch.get_rng_state()),
        "python": {"version": version, "state": list(words), "gauss": gauss},
        "numpy": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _bytes_to_text(torch.cuda.get_rng_state())
    return state


def restore(state: Any) -> None:
    """Set this process's generators from `capture()`'s output (a SpecError if it is malformed)."""
    try:
        torch.set_rng_state(_text_to_bytes(state["torch"]))
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(w) for w in py["state"]), py["gauss"]))
        npy = state["numpy"]
        np.random.set_state((str(npy["kind"]), np.array(npy["keys"], dtype=np.uint32), int(npy["pos"]),
                             int(npy["has_gauss"]), float(npy["cached_gaussian"])))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(_text_to_bytes(state["cuda"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise SpecError(f"checkpoint RNG state is malformed ({type(error).__name__}: {error}); the checkpoint is corrupt") from None


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy from one integer."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
