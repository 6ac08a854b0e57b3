"""A fixed, exactly invertible "VAE" for the toy world: 2x2 pixel-unshuffle, an
orthogonal mix (2x2 Haar wavelet x an orthonormal colour basis: luminance and two
opponent channels), and an affine normalisation so rendered clips give zero-mean,
unit-variance latents overall, as a trained video VAE's scaled latents are."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...checks import check_tensor, require

# Statistics of the mixed coefficients on 576 renders of ToyWorld() (all 72 prompts x 8,
# seed 0). Channel = 4 * colour component + Haar band (average, horizontal, vertical,
# diagonal detail); only the luminance average has a mean. Per-channel stds range from
# 0.39 (luminance average) to 0.016 (diagonal details); one shared scale (their RMS)
# keeps the detail bands at their natural low power, as a real VAE's single scaling
# factor does. Scaling each channel to unit variance instead made the DiT spend its
# capacity on sparse edge bands and sample speckled clips.
LATENT_MEAN = (0.306, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
LATENT_STD = (0.1457,) * 12


def _orthogonal_mix() -> torch.Tensor:
    haar = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64) / 2
    colour = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64)
    colour = colour / colour.norm(dim=1, keepdim=True)
    return torch.kron(colour, haar)  # [12, 12], rows: output channels


class ToyVAE(nn.Module):
    """encode(video [B, F, 3, H, W] in [0, 1]) -> latent [B, 12, F, H/2, W/2] (the
    layout HunyuanVideoDiT takes); decode inverts it exactly and clamps to [0, 1]."""

    latent_channels = 12
    spatial_factor = 2

    def __init__(self, mean: Sequence[float] = LATENT_MEAN, std: Sequence[float] = LATENT_STD):
        super().__init__()
        require(len(mean) == self.latent_channels and len(std) == self.latent_channels,
                f"ToyVAE: mean and std need {self.latent_channels} entries; got {len(mean)} and {len(std)}")
        require(all(s > 0 for s in std), f"ToyVAE: std entries must be positive; got {tuple(std)}")
        self.register_buffer("mix", _orthogonal_mix().float(), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

    def latent_shape(self, frames: int, height: int, width: int):
        return (self.latent_channels, frames, height // self.spatial_factor, width // self.spatial_factor)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_tensor("ToyVAE.encode", "video", video)
        require(video.dim() == 5 and video.shape[2] == 3, f"ToyVAE.encode: video must be [B, F, 3, H, W]; got {tuple(video.shape)}")
        b, f, _, h, w = video.shape
        require(h % 2 == 0 and w % 2 == 0, f"ToyVAE.encode: video height and width must be even; got {h}x{w}")
        pixels = F.pixel_unshuffle(video.float().reshape(b * f, 3, h, w), 2)  # [BF, 12, h/2, w/2]
        mixed = torch.einsum("oc,nchw->nohw", self.mix, pixels)
        latent = mixed.reshape(b, f, self.latent_channels, h // 2, w // 2).transpose(1, 2)
        return ((latent - self.mean) / self.std).contiguous()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        check_tensor("ToyVAE.decode", "latent", latent)
        require(latent.dim() == 5 and latent.shape[1] == self.latent_channels,
                f"ToyVAE.decode: latent must be [B, {self.latent_channels}, F, h, w]; got {tuple(latent.shape)}")
        b, c, f, h, w = latent.shape
        mixed = (latent.float() * self.std + self.mean).transpose(1, 2).reshape(b * f, c, h, w)
        pixels = torch.einsum("oc,nohw->nchw", self.mix, mixed)  # the mix is orthogonal: its transpose inverts it
        video = F.pixel_shuffle(pixels, 2).reshape(b, f, 3, 2 * h, 2 * w)
        return video.clamp(0.0, 1.0)
