"""HunyuanVideo DiT with megatron-core tensor / sequence parallelism and Ulysses."""

from .config import PRESETS, TINY, HunyuanVideoConfig, preset
from .model import HunyuanVideoDiT
from ...distributed.spec import LayerSpec

__all__ = ["HunyuanVideoConfig", "HunyuanVideoDiT", "LayerSpec", "PRESETS", "TINY", "preset"]
