"""Stable Diffusion 3 / 3.5 transformer with megatron-core tensor / sequence parallelism and Ulysses."""

from .config import PRESETS, TINY, SD3Config, preset

__all__ = ["PRESETS", "SD3Config", "SD3DiT", "TINY", "preset"]


def __getattr__(name):  # the module needs megatron-core: imported only when asked for
    if name == "SD3DiT":
        from .model import SD3DiT

        return SD3DiT
    raise AttributeError(name)
