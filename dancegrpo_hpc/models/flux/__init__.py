"""FLUX.1 transformer with megatron-core tensor / sequence parallelism and Ulysses.

The config and packing import light; FluxDiT (megatron-core) loads on first use."""

from .config import PRESETS, FluxConfig, preset

__all__ = ["FluxConfig", "FluxDiT", "PRESETS", "preset"]


def __getattr__(name):
    if name == "FluxDiT":
        from .model import FluxDiT

        return FluxDiT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
