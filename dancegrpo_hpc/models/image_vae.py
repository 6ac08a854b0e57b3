"""The image VAE of the text-to-image families (FLUX.1, SD3.5): diffusers' AutoencoderKL with
the shift and scale of its config.json, an image being a one-frame video.

  encode: latents = (posterior mode - shift_factor) * scaling_factor   (FluxKontextPipeline /
          StableDiffusion3Img2ImgPipeline prepare their image latents so, here with the mode)
  decode: image = VAE.decode(latents / scaling_factor + shift_factor), (x + 1) / 2 clamped to
          [0, 1] (FluxPipeline / StableDiffusion3Pipeline at output_type "pt")

The sampler's latents stay unpacked [B, C, 1, H/8, W/8]; FLUX's 2x2 packing is the
velocity's business (models/flux/family.py), so decoding needs none.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch

from ..checks import InputError, require
from ..conditioning import Conditioning
from .family import DataParts

VAE_CLASS = "AutoencoderKL"


def vae_space(vae_config: Dict) -> int:
    """Pixels per latent pixel: 2 ** (len(block_out_channels) - 1), as diffusers' pipelines compute it."""
    return 2 ** (len(vae_config.get("block_out_channels", (128, 256, 512, 512))) - 1)


def shift_and_scale(config) -> tuple:
    """(shift_factor, or 0 where None, and scaling_factor) of a VAE config (dict or diffusers' FrozenDict)."""
    return float(config.get("shift_factor") or 0.0), float(config["scaling_factor"])


def load_image_vae(path: str, device="cpu", dtype: torch.dtype = torch.float32, tiling: bool = True,
                   tile_size: Optional[int] = None, tile_stride: Optional[int] = None, field: str = "data.vae"):
    """A diffusers AutoencoderKL folder -> the VAE in eval mode, gradients off. tiling: images
    larger than tile_size pixels (default 256, stride 192) are encoded / decoded in
    overlapping, blended tiles (diffusers' tiled_encode / tiled_decode)."""
    config_path = os.path.join(os.fspath(path), "config.json") if path else ""
    require(bool(path) and os.path.isfile(config_path),
            f"config: {field} {path!r} has no config.json; give a diffusers {VAE_CLASS} folder (e.g. <pipeline>/vae)")
    with open(config_path) as f:
        config = json.load(f)
    found = config.get("_class_name", VAE_CLASS)
    require(found == VAE_CLASS, f"config: {field} holds a {found}, not an {VAE_CLASS}; set {field} to this model's "
                                "VAE folder (e.g. <pipeline>/vae)")
    space = vae_space(config)
    size, stride = tile_size or 256, tile_stride or (192 if tile_size is None else None)
    if stride is None:  # a quarter of the tile overlaps, as 256 / 192
        stride = max(space, size * 3 // 4 // space * space)
    for name, value in (("tile_size", size), ("tile_stride", stride)):
        require(value > 0 and value % space == 0,
                f"config: data.vae_{name} must be a positive multiple of the VAE's compression {space}; got {value}")
    require(stride <= size, f"config: data.vae_tile_stride={stride} must not exceed data.vae_tile_size={size}")
    from ..extras import import_extra

    AutoencoderKL = import_extra("diffusers", "real", field).AutoencoderKL
    try:
        vae = AutoencoderKL.from_pretrained(os.fspath(path), torch_dtype=dtype)
    except OSError as e:  # e.g. config.json without weights
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise InputError(f"config: cannot load the VAE in {field} {os.fspath(path)!r}: {reason}; give a complete "
                         f"diffusers {VAE_CLASS} folder") from None
    vae = vae.to(device).eval().requires_grad_(False)
    if tiling:
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = size, size // space
        vae.tile_overlap_factor = 1 - stride / size
    return vae


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, micro_batch: int = 8) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> float32 latents [N, C, 1, H/8, W/8]: (mode - shift) * scale."""
    require(images.dim() == 4 and images.shape[1] == 3,
            f"encode_images: images must be [N, 3, H, W]; got {tuple(images.shape)}")
    space = vae_space(vae.config)
    require(images.shape[-2] % space == 0 and images.shape[-1] % space == 0,
            f"encode_images: height and width must be multiples of the VAE's {space}x compression; got "
            f"{images.shape[-2]}x{images.shape[-1]} (set data.height / data.width)")
    shift, scale = shift_and_scale(vae.config)
    out = []
    for chunk in images.split(micro_batch):
        x = chunk.to(vae.device, vae.dtype) * 2 - 1
        out.append(vae.encode(x).latent_dist.mode().to(torch.float32))
    return ((torch.cat(out) - shift) * scale).unsqueeze(2)


@torch.no_grad()
def decode_images(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, C, 1, h, w] -> images as one-frame videos [B, 1, 3, H, W] in [0, 1], float32, CPU."""
    require(latents.dim() == 5 and latents.shape[2] == 1,
            f"decode: an image VAE decodes latents [B, C, 1, h, w]; got {tuple(latents.shape)}")
    shift, scale = shift_and_scale(vae.config)
    image = vae.decode(latents[:, :, 0] / scale + shift, return_dict=False)[0]
    return ((image.float() + 1) / 2).clamp(0, 1).unsqueeze(1).cpu().contiguous()


class ImageVAEData(DataParts):
    """The VAE side of a text-to-image family: AutoencoderKL, one frame, latent channels and
    the patch grid checked against the model (subclasses: `latent_channels`, `patch`)."""

    vae_class = VAE_CLASS

    def latent_channels(self) -> int:
        raise NotImplementedError

    def patch(self) -> int:
        """Latent pixels per token side (FLUX: 2x2 packing; SD3: patch_size)."""
        raise NotImplementedError

    def latent_shape(self, vae, frames, height, width):
        found = vae.get("_class_name", VAE_CLASS)
        require(found == VAE_CLASS, f"config: data.vae holds a {found} but model family {self.family!r} decodes with "
                                    f"{VAE_CLASS}; set data.vae to this model's VAE folder (e.g. <{self.pipeline}>/vae)")
        require(frames == 1, f"config: data.frames={frames}, but model family {self.family!r} generates images "
                             "(one-frame videos); set data.frames=1")
        channels, want = vae.get("latent_channels", 4), self.latent_channels()
        require(channels == want, f"config: data.vae has {channels} latent channels but model.path's "
                                  f"{self.pipeline} model takes {want}; use the VAE of this model")
        space, patch = vae_space(vae), self.patch()
        for name, size in (("height", height), ("width", width)):
            require(size % (space * patch) == 0,
                    f"config: data.{name}={size} must be a multiple of {space * patch} (VAE {space}x, patch {patch})")
        return (channels, 1, height // space, width // space)

    def load_vae(self, path, device="cpu", dtype=torch.float32, tiling=True, tile_size=None, tile_stride=None):
        return load_image_vae(path, device, dtype, tiling, tile_size, tile_stride)

    def encode_images(self, vae, images):
        return encode_images(vae, images)

    def decode(self, vae, latents, cond: Optional[Conditioning] = None):
        return decode_images(vae, latents)


__all__ = ["ImageVAEData", "decode_images", "encode_images", "load_image_vae", "shift_and_scale", "vae_space"]
