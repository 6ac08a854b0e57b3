"""The HunyuanVideo VAE (diffusers' AutoencoderKLHunyuanVideo, 4x time / 8x space): load from
a local folder, encode reference images, decode latents.

  vae     = load_video_vae(path, device, dtype, tiling=True)
  latents = encode_reference_images(vae, images)   # [N, 3, H, W] in [0, 1] -> [N, C, 1, H/8, W/8], scaled
  videos  = decode_latents(vae, latents)          # [B, C, f, h, w] -> [B, F, 3, H, W] in [0, 1]

The encoding mirrors diffusers' HunyuanVideoImageToVideoPipeline.prepare_latents
(0.42): pixels scaled to [-1, 1], a one-frame video, the posterior's mode
(retrieve_latents(..., "argmax")), cast to float32, times vae.config.scaling_factor
(no shift). data/reference_images.py loads and crops the images (keeping their aspect
ratio, where diffusers' VideoProcessor stretches them).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch

Device = Union[str, torch.device]


def load_video_vae(path: str, device: Device = "cpu", dtype: torch.dtype = torch.float32, tiling: bool = True, *,
                   tile_size: Optional[int] = None, tile_stride: Optional[int] = None,
                   tile_frames: Optional[int] = None, tile_frames_stride: Optional[int] = None):
    """A diffusers AutoencoderKLHunyuanVideo folder (config.json + weights) -> the VAE in eval
    mode with gradients off. tiling=True encodes / decodes inputs larger than tile_size
    pixels (default diffusers' 256, stride 192) in overlapping, blended tiles; videos
    longer than tile_frames (default 16, stride 12) are always processed in chunks."""
    cfg_path = os.path.join(os.fspath(path), "config.json") if path else ""
    if not path or not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"load_video_vae: no diffusers VAE at {path!r} (config.json missing); set data.vae to "
                                "a diffusers AutoencoderKLHunyuanVideo folder, e.g. <HunyuanVideo>/vae")
    from ...extras import import_extra

    AutoencoderKLHunyuanVideo = import_extra("diffusers", "real", "load_video_vae").AutoencoderKLHunyuanVideo
    with open(cfg_path) as f:
        config = json.load(f)
    cls = config.get("_class_name", "AutoencoderKLHunyuanVideo")
    if cls != "AutoencoderKLHunyuanVideo":
        raise ValueError(f"load_video_vae: {path} holds {cls}, not AutoencoderKLHunyuanVideo; set data.vae to "
                         "the HunyuanVideo VAE folder")
    # tiles are cut in latent units: sizes must divide by the compression (checked before loading weights)
    ratio, t_ratio = config.get("spatial_compression_ratio", 8), config.get("temporal_compression_ratio", 4)
    for name, v, r in (("tile_size", tile_size, ratio), ("tile_stride", tile_stride, ratio),
                       ("tile_frames", tile_frames, t_ratio), ("tile_frames_stride", tile_frames_stride, t_ratio)):
        if v is not None and (v <= 0 or v % r):
            raise ValueError(f"load_video_vae: {name} must be a positive multiple of the VAE's compression {r}; "
                             f"got {v}")
    size = tile_size or 256  # diffusers' defaults: 256-pixel tiles every 192 pixels
    # given a tile size but no stride: overlap a quarter of the tile, as 256 / 192
    stride = tile_stride or (192 if tile_size is None else max(ratio, size * 3 // 4 // ratio * ratio))
    if stride > size:
        raise ValueError(f"load_video_vae: tile_stride={stride} must not exceed tile_size={size} (tiles must overlap "
                         "or touch)")
    try:
        vae = AutoencoderKLHunyuanVideo.from_pretrained(os.fspath(path), torch_dtype=dtype)
    except OSError as e:  # e.g. config.json without weights
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"load_video_vae: cannot load the VAE in {path}: {reason}; set data.vae to a complete "
                                "diffusers AutoencoderKLHunyuanVideo folder") from None
    vae = vae.to(device).eval().requires_grad_(False)
    if tiling:
        vae.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size, tile_sample_stride_height=stride,
                          tile_sample_stride_width=stride, tile_sample_min_num_frames=tile_frames,
                          tile_sample_stride_num_frames=tile_frames_stride)
    return vae


@torch.no_grad()
def encode_reference_images(vae, images: torch.Tensor, micro_batch: int = 8) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> float32 latents [N, C, 1, H/8, W/8] * scaling_factor, on the
    VAE's device. diffusers encodes one image per call; micro_batch images per call give
    the same latents (every VAE layer is per-sample) up to float rounding."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"encode_reference_images: images must be [N, 3, H, W]; got {tuple(images.shape)}")
    ratio = vae.config.spatial_compression_ratio
    h, w = images.shape[-2:]
    if h % ratio or w % ratio:
        raise ValueError(f"encode_reference_images: height and width must be multiples of the VAE's {ratio}x "
                         f"compression; got {h}x{w} (set data.height / data.width)")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"encode_reference_images: images must be in [0, 1] (as load_images returns); got "
                         f"[{lo:.3g}, {hi:.3g}]")
    device, dtype = vae.device, vae.dtype
    out = []
    for chunk in images.split(micro_batch):
        x = (chunk.to(device, dtype) * 2 - 1).unsqueeze(2)  # [n, 3, 1, H, W] in [-1, 1]
        out.append(vae.encode(x).latent_dist.mode().to(torch.float32))
    return torch.cat(out) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, C, f, h, w] -> videos [B, F, 3, H, W] in [0, 1], float32 on the CPU
    (diffusers' pipelines: latents / scaling_factor, decode, (x + 1) / 2)."""
    video = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4).cpu().contiguous()


__all__ = ["decode_latents", "encode_reference_images", "load_video_vae"]
