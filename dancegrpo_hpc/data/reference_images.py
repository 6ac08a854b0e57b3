"""Image-to-video reference images: load, resize / centre-crop, VAE-encode.

  images  = load_images(paths, height, width, backend, device)   # [N, 3, H, W] in [0, 1]
  vae     = load_video_vae(path, device, dtype, tiling=True)       # diffusers AutoencoderKLHunyuanVideo
  latents = encode_reference_images(vae, images)                   # [N, C, 1, H/8, W/8], scaled

Loading and cropping are here (DALI or PIL, data/dali_loading.py); the VAE is the model
family's (`ModelFamily.data(config).load_vae / encode_images`); HunyuanVideo's
(models/hunyuan_video/vae.py) is re-exported for existing callers. We keep an image's
aspect ratio and centre-crop (bilinear) where diffusers' VideoProcessor stretches it to
H x W (Lanczos), so a reference image is never distorted.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models.hunyuan_video.vae import encode_reference_images, load_video_vae
from .dali_loading import Device, load_images, load_videos


def reference_latents(vae, paths: Sequence[str], height: int, width: int, backend: str = "dali",
                      device: Device = "cpu", micro_batch: int = 8) -> torch.Tensor:
    """load_images then encode_reference_images: reference image files -> scaled latents."""
    return encode_reference_images(vae, load_images(paths, height, width, backend, device), micro_batch)


__all__ = ["encode_reference_images", "load_images", "load_video_vae", "load_videos", "reference_latents"]
