"""An animated GIF comparing clips: one labelled row per group (e.g. before /
after), one column per sample, each column headed by its label (the prompt), frames
played in sync."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checks import require

BACKGROUND = (24, 24, 24)
LABEL_COLOUR = (235, 235, 235)
MAX_LABEL_LINES = 3  # long prompts are wrapped to this many lines, the last one cut with "..."
LINE_SPACING = 1


@dataclass(frozen=True)
class VideoGridLayout:
    """Where each clip lands in the GIF, for callers and tests that read it back."""

    label_width: int
    tile_height: int
    tile_width: int
    gap: int
    rows: int
    columns: int
    header_height: int = 0  # the column labels above the clips, with the gap below them (0: no column labels)

    def tile_origin(self, row: int, column: int) -> Tuple[int, int]:
        """(x, y) of the top-left pixel of a clip."""
        return (self.label_width + self.gap + column * (self.tile_width + self.gap),
                self.header_height + self.gap + row * (self.tile_height + self.gap))

    def column_label_box(self, column: int) -> Tuple[int, int, int, int]:
        """(x, y, width, height) of a column's label, above its clips and as wide."""
        x, _ = self.tile_origin(0, column)
        return x, self.gap, self.tile_width, max(self.header_height - self.gap, 0)

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the GIF."""
        return (self.label_width + self.gap + self.columns * (self.tile_width + self.gap),
                self.header_height + self.gap + self.rows * (self.tile_height + self.gap))


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


def line_height(font) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + LINE_SPACING


def wrap_label(text: str, font, width: int, max_lines: int = MAX_LABEL_LINES) -> List[str]:
    """text in lines no wider than `width` pixels in `font`: broken at spaces (inside a
    word too long for a line), at most max_lines, the last ending in '...' when cut."""
    lines: List[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while font.getlength(word) > width and len(word) > 1:  # a word wider than the tile: cut it
            cut = max(n for n in range(1, len(word)) if font.getlength(word[:n]) <= width or n == 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + "..."]
    return lines


def _draw_lines(image, font, lines: Sequence[str], x: int, y: int) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((x, y + i * line_height(font)), line, fill=LABEL_COLOUR, font=font, anchor="la")


def render_video_grid(videos_by_row: Dict[str, torch.Tensor], scale: int = 4, gap: int = 4,
                      column_labels: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, VideoGridLayout]:
    """The GIF's frames, [F, height, width, 3] uint8, and where everything is. Row labels (the
    dict's keys) sit left of the rows; column_labels (one per clip of a row, e.g. its prompt)
    above the columns, wrapped to the clip width."""
    require(isinstance(scale, int) and scale >= 1, f"write_video_grid: scale must be an int >= 1; got {scale!r}")
    from PIL import Image, ImageDraw, ImageFont

    columns, frames, _, height, width = _check_videos(videos_by_row)
    labels = list(videos_by_row)
    if column_labels is not None:
        column_labels = list(column_labels)
        require(len(column_labels) == columns and all(isinstance(t, str) for t in column_labels),
                f"write_video_grid: column_labels must be {columns} strings, one per clip of a row; got "
                f"{len(column_labels)}")
    font = ImageFont.load_default()
    label_width = 12 + max(int(font.getlength(label)) for label in labels)
    # a glyph's ink may reach a pixel either side of its advance: 1 pixel of margin keeps labels inside their box
    wrapped = [wrap_label(t, font, width * scale - 2) for t in column_labels] if column_labels is not None else []
    header = max(len(lines) for lines in wrapped) * line_height(font) + gap if wrapped else 0
    layout = VideoGridLayout(label_width, height * scale, width * scale, gap, len(labels), columns, header)
    canvas_w, canvas_h = layout.size
    strip = Image.new("RGB", (canvas_w, canvas_h), BACKGROUND)  # every label, drawn once for all frames
    draw = ImageDraw.Draw(strip)
    for row, label in enumerate(labels):
        _, y = layout.tile_origin(row, 0)
        draw.text((6, y + layout.tile_height // 2), label, fill=LABEL_COLOUR, font=font, anchor="lm")
    for column, lines in enumerate(wrapped):
        x, y, _, _ = layout.column_label_box(column)
        _draw_lines(strip, font, lines, x + 1, y)
    canvas = torch.from_numpy(np.array(strip)).unsqueeze(0).repeat(frames, 1, 1, 1)
    for row, label in enumerate(labels):
        pixels = (videos_by_row[label].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 1, 3, 4, 2)  # N, F, H, W, 3
        pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        for column in range(columns):
            x, y = layout.tile_origin(row, column)
            canvas[:, y : y + layout.tile_height, x : x + layout.tile_width] = pixels[column]
    return canvas, layout


def write_video_grid(videos_by_row: Dict[str, torch.Tensor], path, scale: int = 4, fps: float = 8.0,
                     gap: int = 4, column_labels: Optional[Sequence[str]] = None) -> VideoGridLayout:
    """videos_by_row: label -> [N, F, 3, H, W] with values in [0, 1] (clipped); column_labels:
    N strings shown above the columns (the prompts). Clips are upscaled `scale` times by
    nearest neighbour so small ones stay visible."""
    require(fps > 0, f"write_video_grid: fps must be positive; got {fps!r}")
    from PIL import Image

    canvas, layout = render_video_grid(videos_by_row, scale=scale, gap=gap, column_labels=column_labels)
    images = [Image.fromarray(frame.numpy()) for frame in canvas]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # identical consecutive frames are merged by PIL with their durations summed, so timing stays right
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return layout
