"""An animated GIF comparing clips: one labelled row per group (e.g. before /
after), one column per sample, frames played in sync."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

from ..checks import require

BACKGROUND = (24, 24, 24)
LABEL_COLOUR = (235, 235, 235)


@dataclass(frozen=True)
class VideoGridLayout:
    """Where each clip lands in the GIF, for callers and tests that read it back."""

    label_width: int
    tile_height: int
    tile_width: int
    gap: int
    rows: int
    columns: int

    def tile_origin(self, row: int, column: int) -> Tuple[int, int]:
        """(x, y) of the top-left pixel of a clip."""
        return (self.label_width + self.gap + column * (self.tile_width + self.gap),
                self.gap + row * (self.tile_height + self.gap))

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the GIF."""
        return (self.label_width + self.gap + self.columns * (self.tile_width + self.gap),
                self.gap + self.rows * (self.tile_height + self.gap))


def _check_videos(videos_by_row: Dict[str, torch.Tensor]) -> torch.Size:
    require(isinstance(videos_by_row, dict) and videos_by_row,
            "write_video_grid: videos_by_row must be a non-empty dict of label -> tensor [N, F, 3, H, W]")
    shape = None
    for label, video in videos_by_row.items():
        require(isinstance(video, torch.Tensor) and video.dim() == 5 and video.shape[2] == 3,
                f"write_video_grid: row {label!r} must be a tensor [N, F, 3, H, W]; got "
                f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        require(bool(torch.isfinite(video).all()), f"write_video_grid: row {label!r} holds NaN or inf values")
        shape = shape or video.shape
        require(video.shape == shape, f"write_video_grid: row {label!r} has shape {tuple(video.shape)} but the "
                                      f"first row has {tuple(shape)}; give every row the same N, F, H and W")
    return shape


def _label_strip(labels, layout: VideoGridLayout, height: int):
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (layout.label_width, height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for row, label in enumerate(labels):
        _, y = layout.tile_origin(row, 0)
        draw.text((6, y + layout.tile_height // 2), label, fill=LABEL_COLOUR, anchor="lm")
    return torch.from_numpy(np.array(strip))


def write_video_grid(videos_by_row: Dict[str, torch.Tensor], path, scale: int = 4, fps: float = 8.0,
                     gap: int = 4) -> VideoGridLayout:
    """videos_by_row: label -> [N, F, 3, H, W] with values in [0, 1] (clipped).
    Clips are upscaled `scale` times by nearest neighbour so small ones stay visible."""
    require(isinstance(scale, int) and scale >= 1, f"write_video_grid: scale must be an int >= 1; got {scale!r}")
    require(fps > 0, f"write_video_grid: fps must be positive; got {fps!r}")
    from PIL import Image, ImageFont

    columns, frames, _, height, width = _check_videos(videos_by_row)
    labels = list(videos_by_row)
    font = ImageFont.load_default()
    label_width = 12 + max(int(font.getlength(label)) for label in labels)
    layout = VideoGridLayout(label_width, height * scale, width * scale, gap, len(labels), columns)
    canvas_w, canvas_h = layout.size
    canvas = torch.empty(frames, canvas_h, canvas_w, 3, dtype=torch.uint8)
    canvas[:] = torch.tensor(BACKGROUND, dtype=torch.uint8)
    canvas[:, :, : layout.label_width] = _label_strip(labels, layout, canvas_h)
    for row, label in enumerate(labels):
        pixels = (videos_by_row[label].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 1, 3, 4, 2)  # N, F, H, W, 3
        pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        for column in range(columns):
            x, y = layout.tile_origin(row, column)
            canvas[:, y : y + layout.tile_height, x : x + layout.tile_width] = pixels[column]
    images = [Image.fromarray(frame.numpy()) for frame in canvas]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # identical consecutive frames are merged by PIL with their durations summed, so timing stays right
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return layout
