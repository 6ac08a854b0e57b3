"""In-memory preprocessing of decoded videos for the reward models.

Videos arrive as float [B, F, C, H, W] in [0, 1] on the trainer's device; the
reference pipelines (CLIP, HPS, PickScore, VideoAlign) decode files into PIL
images and run torchvision or a Hugging Face image processor. Here the same
steps run on tensors, with torch.nn.functional.interpolate (no torchvision: it
has no CPU build on the development machines, and a file round trip per batch
would cost more than the reward model). Each model states its steps in its
own module; this file holds the shared pieces:

  frame sampling   evenly spaced frames, by count or by a target fps
  resize           bicubic with antialias (PIL's filter), shortest side or exact size
  center crop      torchvision's rounding of the offsets
  normalisation    (x - mean) / std per channel

Values stay float: unlike the PIL route there is no 8-bit rounding, so scores
differ from file-based reference scripts by that quantisation only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..checks import check_tensor, require

# OpenAI CLIP's normalisation; open_clip ViT-H-14 (HPS) and the LAION CLIP models use it too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_videos(where: str, videos: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> None:
    """videos float [B, F, 3, H, W]; prompts one str per video."""
    check_tensor(where, "videos", videos)
    require(videos.dim() == 5 and videos.shape[2] == 3 and videos.shape[1] >= 1,
            f"{where}: videos must be [B, F, 3, H, W] with F >= 1 (an image is a 1-frame video); "
            f"got {tuple(videos.shape)}")
    if prompts is not None:
        require(not isinstance(prompts, str) and len(prompts) == videos.shape[0]
                and all(isinstance(p, str) for p in prompts),
                f"{where}: prompts must be a list of {videos.shape[0]} str, one per video")


def frame_count(total: int, *, num_frames: Optional[int] = None, fps: Optional[float] = None,
                video_fps: Optional[float] = None) -> int:
    """How many frames to keep of `total`: num_frames, or total / video_fps * fps
    (the clip's duration times the target rate, rounded), at least 1 and at most total."""
    require(num_frames is None or fps is None, "frame sampling: give num_frames or fps, not both")
    if fps is not None:
        require(video_fps is not None and video_fps > 0 and fps > 0,
                f"frame sampling: fps={fps!r} needs the decoded video's rate video_fps > 0; got {video_fps!r}")
        count = round(total / video_fps * fps)
    elif num_frames is not None:
        require(isinstance(num_frames, int) and num_frames >= 1,
                f"frame sampling: num_frames must be an int >= 1; got {num_frames!r}")
        count = num_frames
    else:
        count = total
    return max(1, min(int(count), total))


def sample_frame_indices(total: int, count: int) -> torch.Tensor:
    """`count` evenly spaced frame indices in [0, total-1], first and last included
    (linspace then round, as qwen-vl-utils and decord-based readers do)."""
    require(total >= 1 and 1 <= count, f"frame sampling: need total >= 1 and count >= 1; got {total}, {count}")
    if count == 1:
        return torch.tensor([(total - 1) // 2])  # one frame: the middle one
    return torch.linspace(0, total - 1, count, dtype=torch.float64).round().long()


def sample_frames(videos: torch.Tensor, count: int) -> torch.Tensor:
    """[B, F, C, H, W] -> [B, count, C, H, W] (count <= F)."""
    index = sample_frame_indices(videos.shape[1], count).to(videos.device)
    return videos.index_select(1, index)


def shortest_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """Output (h, w) with the shorter side = size and the aspect ratio kept; the long
    side is truncated, like torchvision's Resize(int) and CLIPImageProcessor."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize(images: torch.Tensor, size: Tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of [N, C, H, W] to (h, w). With antialias, downscaling widens the
    kernel like PIL's BICUBIC filter (the reference pipelines resize PIL images).
    Clamped to [0, 1] because PIL clips its uint8 output; bicubic overshoots."""
    h, w = size
    if tuple(images.shape[-2:]) == (h, w):
        return images
    dtype = images.dtype
    x = images if dtype in (torch.float32, torch.float64) else images.float()
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    return x.clamp_(0.0, 1.0).to(dtype)


def center_crop(images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Central (h, w) window of [N, C, H, W]; offsets rounded as torchvision does."""
    h, w = size
    height, width = images.shape[-2:]
    require(h <= height and w <= width, f"center_crop: crop {h}x{w} is larger than the image {height}x{width}")
    top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
    return images[..., top:top + h, left:left + w]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std over the channel dim of [N, C, H, W]."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


@dataclass(frozen=True)
class ImagePreprocess:
    """CLIP-style image preprocessing: resize the shortest side to `resize_to`,
    center-crop `crop` x `crop`, normalise. Images [N, 3, H, W] in [0, 1]."""

    resize_to: int = 224
    crop: int = 224
    mean: Tuple[float, ...] = CLIP_MEAN
    std: Tuple[float, ...] = CLIP_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = resize(images, shortest_side_size(*images.shape[-2:], self.resize_to))
        return normalize(center_crop(x, (self.crop, self.crop)), self.mean, self.std)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> Tuple[int, int]:
    """Qwen2-VL's frame size: each side a multiple of `factor` (patch 14 x merge 2),
    aspect ratio nearly kept, pixel count within [min_pixels, max_pixels]."""
    require(max(height, width) / min(height, width) <= 200,
            f"smart_resize: aspect ratio of {height}x{width} is above 200; frames that thin cannot be scored")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w
