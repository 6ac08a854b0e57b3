"""Image / video loading without DALI: PIL decodes images, PyAV decodes videos.

This is the reference the DALI pipelines (dali_loading.py) are tested against, and
the fallback backend ("pil"). Both compute the same function:

  decode -> RGB uint8 -> keep the centred region of the target aspect ratio W/H
  -> resize it to exactly H x W (bilinear, antialiased when shrinking) -> float / 255.

Cropping the fractional centre region and resizing it is "resize the shorter side,
then centre-crop" without rounding the intermediate size, so both backends agree
on the geometry exactly (DALI: relative resize ROI; PIL: resize(box=...)).
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def crop_fraction(h: float, w: float, height: int, width: int) -> Tuple[float, float]:
    """Fraction (fy, fx) of an h x w input kept by the centre crop to aspect width/height.
    The same formula is written with DALI's math in dali_loading._crop_resize."""
    return min(1.0, (height / width) * (w / h)), min(1.0, (width / height) * (h / w))


def check_files(paths: Sequence[str], what: str) -> List[str]:
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError(f"{what}: no paths given")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{what}: no such file: {p}")
    return paths


def crop_resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, 3] uint8 -> [3, height, width] float32 in [0, 1]. Each channel is resized
    in PIL's float mode, so nothing is rounded to uint8 after decoding (as in DALI,
    which resizes straight to float)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    fy, fx = crop_fraction(h, w, height, width)
    box = ((1 - fx) / 2 * w, (1 - fy) / 2 * h, (1 + fx) / 2 * w, (1 + fy) / 2 * h)
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c])).convert("F")
                   .resize((width, height), Image.Resampling.BILINEAR, box=box))
        for c in range(3)
    ]
    return np.stack(chans) / np.float32(255.0)


def decode_image(path: str, what: str = "load_images") -> np.ndarray:
    """One image file -> [h, w, 3] uint8 RGB, EXIF orientation applied (DALI's
    decoders.image does the same by default: adjust_orientation=True)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what}: cannot decode image {path}: {e}") from None


def load_images_pil(paths: Sequence[str], height: int, width: int) -> torch.Tensor:
    paths = check_files(paths, "load_images")
    return torch.from_numpy(np.stack([crop_resize(decode_image(p), height, width) for p in paths]))


def _plane(plane) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def yuv420p_to_rgb(frame) -> np.ndarray:
    """Limited-range YUV 4:2:0 -> RGB uint8 with BT.601 coefficients and bilinear,
    centre-sited chroma upsampling: what DALI 2.4's video decoder does (measured: it
    matches to +-1 level). DALI uses BT.601 even for BT.709-tagged streams; we mirror
    that so both backends give the same tensors (swscale's default conversion, PyAV's
    to_ndarray("rgb24"), differs from DALI by ~1.5 levels on average)."""
    y = torch.from_numpy(_plane(frame.planes[0]).astype(np.float32))
    uv = torch.from_numpy(np.stack([_plane(frame.planes[1]), _plane(frame.planes[2])]).astype(np.float32))
    h, w = y.shape
    uv = F.interpolate(uv[None], size=(2 * uv.shape[1], 2 * uv.shape[2]), mode="bilinear", align_corners=False)
    cb, cr = (uv[0, :, :h, :w] - 128) * (255 / 224)
    y = (y - 16) * (255 / 219)
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=-1)
    return rgb.round_().clamp_(0, 255).to(torch.uint8).numpy()


def frame_to_rgb(frame) -> np.ndarray:
    if frame.format.name == "yuv420p" and int(getattr(frame, "color_range", 0) or 0) != 2:  # 2 = full range
        return yuv420p_to_rgb(frame)
    return frame.to_ndarray(format="rgb24")  # other pixel formats: swscale (may differ from DALI by a level or two)


def decode_video(path: str, frames: int, stride: int) -> np.ndarray:
    """Frames 0, stride, ..., (frames-1)*stride of the first video stream -> [T, h, w, 3] uint8."""
    try:
        import av
    except ImportError:
        raise ImportError("load_videos: backend='pil' needs PyAV: pip install av") from None
    out: List[np.ndarray] = []
    count = 0  # frames decoded; all of them when the clip is too short
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"load_videos: {path} has no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                count = i + 1
                if i % stride == 0:
                    out.append(frame_to_rgb(frame))
                    if len(out) == frames:
                        break
    except av.FFmpegError as e:
        raise ValueError(f"load_videos: cannot decode video {path}: {e}") from None
    if len(out) < frames:
        raise ValueError(f"load_videos: {path} is too short: frames={frames} at stride={stride} needs "
                         f"{(frames - 1) * stride + 1} frames, it has {count}")
    return np.stack(out)


def load_videos_av(paths: Sequence[str], frames: int, height: int, width: int, stride: int = 1) -> torch.Tensor:
    paths = check_files(paths, "load_videos")
    clips = [np.stack([crop_resize(f, height, width) for f in decode_video(p, frames, stride)]) for p in paths]
    return torch.from_numpy(np.stack(clips))


__all__ = ["crop_fraction", "crop_resize", "decode_image", "decode_video", "load_images_pil", "load_videos_av",
           "yuv420p_to_rgb"]
