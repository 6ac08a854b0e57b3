"""FLUX's token layout: latents [B, C, H, W] packed 2x2 into tokens [B, H/2 * W/2, 4C],
and the position ids RoPE reads (diffusers' FluxPipeline._pack_latents, _unpack_latents,
_prepare_latent_image_ids and its text ids).

Our sampler's state is a latent video [B, C, F, H, W]; FLUX is an image model, F = 1.
"""

from __future__ import annotations

import torch

from ...checks import require


def _check_image(latents: torch.Tensor, where: str) -> None:
    require(latents.dim() == 5 and latents.shape[2] == 1,
            f"{where}: FLUX latents must be [B, C, 1, H, W] (one frame); got {tuple(latents.shape)}")
    require(latents.shape[3] % 2 == 0 and latents.shape[4] % 2 == 0,
            f"{where}: latent height and width must be even (2x2 packing); got {tuple(latents.shape[3:])}")


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, 1, H, W] -> [B, (H/2)(W/2), 4C]: token (i, j) holds channels (c, dy, dx) of the
    2x2 patch at row 2i, column 2j, c major (FluxPipeline._pack_latents)."""
    _check_image(latents, "flux pack")
    b, c, _, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, (H/2)(W/2), 4C] -> [B, C, 1, H, W] for latent height / width H, W
    (FluxPipeline._unpack_latents, which takes pixel sizes)."""
    b, n, channels = tokens.shape
    require(height % 2 == 0 and width % 2 == 0 and n == (height // 2) * (width // 2) and channels % 4 == 0,
            f"flux unpack: {n} tokens of {channels} channels do not pack a {height} x {width} latent "
            f"({(height // 2) * (width // 2)} tokens of 4C channels)")
    x = tokens.reshape(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, 1, height, width)


def image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Position ids [(H/2)(W/2), 3] of the packed tokens of an H x W latent: (0, row, column)
    (FluxPipeline._prepare_latent_image_ids at height // 2, width // 2)."""
    rows, cols = height // 2, width // 2
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Position ids [L, 3] of the text tokens: all zero (FluxPipeline.encode_prompt)."""
    return torch.zeros(length, 3, device=device, dtype=dtype)
