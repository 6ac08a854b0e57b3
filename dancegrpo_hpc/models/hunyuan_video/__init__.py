"""HunyuanVideo DiT with megatron-core tensor / sequence parallelism and Ulysses."""

from .config import PRESETS, TINY, HunyuanVideoConfig, preset
from .model import HunyuanVideoDiT
from .spec import LayerSpec

__all__ = ["HunyuanVideoConfig", "HunyuanVideoDiT", "LayerSpec", "PRESETS", "TINY", "preset"]
