"""Capture and restore every random generator a training rank draws from, as
plain values and tensors so torch.load(weights_only=True) can read them back."""

from __future__ import annotations

import random
from typing import Any, Dict

import torch

from ..checks import require

try:
    import numpy as np
except ImportError:  # numpy is optional for the RNG state
    np = None


def capture_rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if np is not None:
        name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        # the key as a tensor: weights_only loading refuses numpy arrays
        state["numpy"] = (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    require(isinstance(state, dict) and "python" in state and "torch" in state,
            "rng state: expected the dict from capture_rng_state() with 'python' and 'torch' entries")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))  # a loaded state may hold lists
    torch.set_rng_state(state["torch"])
    if np is not None and "numpy" in state:
        name, key, pos, has_gauss, gauss_value = state["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss_value))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        require(len(saved) == torch.cuda.device_count(),
                f"rng state: saved for {len(saved)} CUDA devices but {torch.cuda.device_count()} are visible; "
                "resume with the same CUDA_VISIBLE_DEVICES")
        torch.cuda.set_rng_state_all(saved)
