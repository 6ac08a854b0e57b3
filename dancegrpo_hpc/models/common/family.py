"""Checks the joint-attention DiT families (HunyuanVideo, FLUX) share behind
ModelFamily.check_model: one-line errors naming the config fields."""

from __future__ import annotations

from typing import Tuple

from ...checks import require


def check_layout(model, tensor: int, ulysses: int, where: str) -> None:
    """Heads over parallel.tensor x parallel.ulysses, MLP and AdaLN widths over parallel.tensor."""
    heads, parallel = model.num_attention_heads, tensor * ulysses
    fits = [str(n) for n in range(1, heads + 1) if heads % n == 0]
    require(heads % parallel == 0,
            f"config: parallel.tensor x parallel.ulysses = {parallel} must divide the {heads} attention heads of "
            f"{where}; use a product in {', '.join(fits)}")
    require(model.mlp_hidden % tensor == 0 and 6 * model.hidden_size % tensor == 0,
            f"config: parallel.tensor={tensor} must divide the MLP width {model.mlp_hidden} of {where}")


def check_latent_grid(shape: Tuple[int, int, int, int], patch: int) -> None:
    """The latent height and width of shape (C, F, H, W) divide by the patch."""
    for axis, size in (("height", shape[2]), ("width", shape[3])):
        require(size % patch == 0,
                f"config: data.{axis} gives {size} latent pixels, not divisible by the patch size {patch}")
