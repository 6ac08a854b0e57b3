"""The policy's velocity: the DiT under its conditioning, optional real CFG and
embedded guidance. The same function serves rollout and training, so recomputed
log-probs match the rollout's exactly."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class Conditioning:
    """Conditioning per sample: text embeds [N, L, D], mask [N, L], pooled [N, P];
    image_latents [N, C, 1, h, w] (scaled VAE latents of the reference image) for
    image-to-video models; `negative` holds the unconditional branch for real CFG
    (image-to-video: the same image latents, another text)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    negative: Optional["Conditioning"] = None
    image_latents: Optional[torch.Tensor] = None

    def _map(self, fn) -> "Conditioning":
        neg = self.negative._map(fn) if self.negative is not None else None
        image = fn(self.image_latents) if self.image_latents is not None else None
        return Conditioning(fn(self.embeds), fn(self.mask), fn(self.pooled), neg, image)

    def select(self, index) -> "Conditioning":
        return self._map(lambda t: t[index])

    def to(self, device) -> "Conditioning":
        return self._map(lambda t: t.to(device))

    def __len__(self) -> int:
        return self.embeds.shape[0]


def _cat(a: Conditioning, b: Conditioning) -> Conditioning:
    image = None if a.image_latents is None else torch.cat([a.image_latents, b.image_latents])
    return Conditioning(torch.cat([a.embeds, b.embeds]), torch.cat([a.mask, b.mask]), torch.cat([a.pooled, b.pooled]),
                        image_latents=image)


def dit_input(config, x: torch.Tensor, image_latents: Optional[torch.Tensor]) -> torch.Tensor:
    """The DiT input for the sampled state x [B, C, F, H, W], as diffusers' image-to-video
    pipelines build it (HunyuanVideoImageToVideoPipeline, HunyuanSkyreelsImageToVideoPipeline).
    Channel concatenation (in_channels > out_channels): [x | image latent in frame 0, zeros
    after | mask, 1 in frame 0], cut to in_channels (SkyReels 32: no mask; HunyuanVideo-I2V
    33: with mask). token_replace: the image latent is frame 0 and x the frames after it
    (the state holds only the generated frames). Text-to-video: x."""
    extra = config.in_channels - config.out_channels
    token_replace = config.image_condition_type == "token_replace"
    if not (extra or token_replace):
        if image_latents is not None:
            raise ValueError(f"velocity: model {config.variant!r} is text-to-video but the conditioning has image "
                             "latents")
        return x
    if image_latents is None:
        raise ValueError(f"velocity: image-to-video model {config.variant!r} needs Conditioning.image_latents")
    if not token_replace and extra not in (config.out_channels, config.out_channels + 1):
        raise ValueError(f"velocity: model {config.variant!r} takes {config.in_channels} input channels for "
                         f"{config.out_channels} latent channels; image concatenation needs 2x (+1 for the mask)")
    image = image_latents.to(x.dtype)
    if token_replace:
        return torch.cat([image, x], dim=2)
    b, _, f, h, w = x.shape
    first = torch.zeros(b, 1, f, h, w, dtype=x.dtype, device=x.device)
    first[:, :, 0] = 1
    padded = torch.cat([image, image.new_zeros(b, image.shape[1], f - 1, h, w)], dim=2)
    return torch.cat([x, padded, first], dim=1)[:, :config.in_channels]


@dataclass(frozen=True)
class VelocityOptions:
    cfg_scale: float = 1.0
    guidance: Optional[float] = None  # embedded guidance scale (the DiT gets guidance * 1000)
    autocast: Optional[torch.dtype] = None
    train_uncond: bool = True  # under CFG in training: gradients through the unconditional branch too

    def with_(self, **changes) -> "VelocityOptions":
        return replace(self, **changes)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward(model, x, sigma, cond: Conditioning, opts: VelocityOptions) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    timestep = (sigma.to(torch.float32) * 1000.0).to(x.device)
    guidance = None
    if opts.guidance is not None:
        guidance = torch.full((x.shape[0],), opts.guidance * 1000.0, device=x.device, dtype=torch.float32)
    hidden = dit_input(model.config, x, cond.image_latents)
    with _autocast(x.device, opts.autocast):
        out = model(hidden.to(dtype), timestep, cond.embeds.to(dtype), cond.mask, cond.pooled.to(dtype), guidance)
    # the velocity of the sampled frames only: token_replace's image frame is a fixed condition
    return out[:, :, out.shape[2] - x.shape[2]:].float()


def velocity(model, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, opts: VelocityOptions) -> torch.Tensor:
    """Model velocity at x [B, C, F, H, W], sigma [B]; float32.

    With cfg_scale > 1: uncond + s * (cond - uncond). Cond and uncond run as one
    batch when both need gradients (or none does); with train_uncond=False the
    unconditional branch runs without autograd (same value, no gradient through it)."""
    if opts.cfg_scale == 1.0:
        return _forward(model, x, sigma, cond, opts)
    if cond.negative is None:
        raise ValueError("velocity: cfg_scale > 1 needs unconditional conditioning (Conditioning.negative)")
    if opts.train_uncond or not torch.is_grad_enabled():
        both = _forward(model, torch.cat([x, x]), torch.cat([sigma, sigma]), _cat(cond, cond.negative), opts)
        c, u = both.chunk(2)
    else:
        c = _forward(model, x, sigma, cond, opts)
        with torch.no_grad():
            u = _forward(model, x, sigma, cond.negative, opts)
    return u + opts.cfg_scale * (c - u)
