"""Programmatic rewards for the toy world (dancegrpo_hpc.models.toy): text alignment,
motion quality and visual quality of decoded videos [B, F, 3, H, W] in [0, 1].

Each returns float32 [B] in [0, 1], deterministic and NaN-free on any input. They
are built from smooth statistics of a soft foreground mask (colour of the shape,
moments of its silhouette, its centroid track), so nearby videos get nearby scores
and a GRPO group has signal even when no sample is right.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..checks import require
from ..models.toy.world import COLOURS, DIRECTIONS, SHAPES, ToyWorld, make_prompt
from .preprocess import check_videos

EPS = 1e-6
# Colour distance from the background: below MASK_LOW a pixel is background, above
# MASK_HIGH it is the shape (smooth in between). Exactly zero below, so a faint haze
# over the whole frame cannot pull the silhouette's moments.
MASK_LOW, MASK_HIGH = 0.15, 0.45


def _check(where: str, videos: torch.Tensor, prompts: Optional[Sequence[str]]) -> torch.Tensor:
    check_videos(where, videos, prompts)
    return videos.float().nan_to_num(0.0).clamp(0.0, 1.0)


class Analysis:
    """Soft foreground statistics of videos [B, F, 3, H, W] shared by the rewards."""

    def __init__(self, videos: torch.Tensor):
        b, f, _, h, w = videos.shape
        self.videos, self.scale = videos, min(h, w) / 32.0  # pixel-valued thresholds are set at 32x32
        self.bg = videos.permute(0, 2, 1, 3, 4).reshape(b, 3, -1).median(dim=-1).values  # [B, 3]: most pixels
        self.distance = (videos - self.bg[:, None, :, None, None]).norm(dim=2)  # [B, F, H, W]
        ramp = ((self.distance - MASK_LOW) / (MASK_HIGH - MASK_LOW)).clamp(0, 1)
        self.mask = ramp * ramp * (3 - 2 * ramp)  # smoothstep
        self.area = self.mask.sum(dim=(2, 3))  # [B, F]
        self.frame_presence = 1 - torch.exp(-self.area / (4.0 * self.scale ** 2))
        self.presence = self.frame_presence.mean(dim=1)
        ys = torch.arange(h, dtype=videos.dtype, device=videos.device) + 0.5
        xs = torch.arange(w, dtype=videos.dtype, device=videos.device) + 0.5
        weight = self.area + EPS
        # An empty frame's centroid falls back to the frame centre.
        cx = ((self.mask * xs).sum(dim=(2, 3)) + EPS * w / 2) / weight
        cy = ((self.mask * ys[:, None]).sum(dim=(2, 3)) + EPS * h / 2) / weight
        self.centroid = torch.stack([cx, cy], dim=-1)  # [B, F, 2] in (x, y) pixels
        self.dx = xs.view(1, 1, 1, w) - cx[..., None, None]
        self.dy = ys.view(1, 1, h, 1) - cy[..., None, None]

    def foreground_colour(self) -> torch.Tensor:
        """[B, 3] colour of the shape: fully covered pixels dominate edge pixels."""
        weight = self.mask * self.distance ** 4
        total = weight.sum(dim=(1, 2, 3))
        colour = (weight.unsqueeze(2) * self.videos).sum(dim=(1, 3, 4))
        return (colour + EPS * self.bg) / (total + EPS)[:, None]

    def shape_features(self) -> torch.Tensor:
        """[B, 3] scale-invariant silhouette moments, averaged over frames: spread,
        three-fold (triangle) and four-fold (square) harmonics."""
        m, dx, dy = self.mask, self.dx, self.dy
        area = self.area + EPS
        r2 = (m * (dx * dx + dy * dy)).sum(dim=(2, 3)) / area
        spread = r2 / area  # disk 1/(2 pi), square 1/6, triangle sqrt(3)/9
        threefold = (m * (3 * dx * dx * dy - dy ** 3)).sum(dim=(2, 3)) / area / (r2 + EPS) ** 1.5
        fourfold = (m * (dx ** 4 - 6 * dx * dx * dy * dy + dy ** 4)).sum(dim=(2, 3)) / area / (r2 + EPS) ** 2
        features = torch.stack([10 * spread, threefold, fourfold], dim=-1)  # [B, F, 3]
        weight = self.frame_presence.unsqueeze(-1) + EPS
        return (features * weight).sum(dim=1) / weight.sum(dim=1)

    def compactness(self) -> torch.Tensor:
        """[B] in [0, 1]: is the foreground one compact object? The isoperimetric ratio
        perimeter^2 / (4 pi area) of the soft mask is 1 for a disk and about 1.7 for the
        triangle; two blobs or speckle give far more. Full marks up to 2.2, then
        inversely proportional; averaged over the frames that show something."""
        mx = self.mask[..., :, 1:] - self.mask[..., :, :-1]
        my = self.mask[..., 1:, :] - self.mask[..., :-1, :]
        grad = torch.sqrt(mx[..., :-1, :].pow(2) + my[..., :, :-1].pow(2) + EPS) - math.sqrt(EPS)
        ratio = grad.sum(dim=(2, 3)).pow(2) / (4 * math.pi * (self.area + EPS))
        compact = (2.2 / (ratio + EPS)).clamp_max(1)
        return (compact * self.frame_presence).sum(dim=1) / (self.frame_presence.sum(dim=1) + EPS)

    def velocity(self) -> torch.Tensor:
        """[B, 2] least-squares centroid velocity in pixels per frame."""
        f = self.centroid.shape[1]
        t = torch.arange(f, dtype=self.videos.dtype, device=self.videos.device)
        t = (t - t.mean()).view(1, f, 1)
        return (t * self.centroid).sum(dim=1) / max(float((t * t).sum()), EPS)


# ------------------------------------------------------------------------------ text alignment
_PROTOTYPES: Dict[tuple, torch.Tensor] = {}  # computed once per process


def shape_prototypes() -> torch.Tensor:
    """[len(SHAPES), 3] mean shape features of 32x32 renders (fixed seed), so the
    reference includes the pixel grid and anti-aliasing (the features are scale-free)."""
    key = (32, 32)
    if key not in _PROTOTYPES:
        world, gen = ToyWorld(frames=4), torch.Generator().manual_seed(0)
        rows = []
        for shape in SHAPES:
            prompts = [make_prompt(c, shape, d) for c in COLOURS for d in DIRECTIONS]
            rows.append(Analysis(world.render(prompts, gen)).shape_features().mean(dim=0))
        _PROTOTYPES[key] = torch.stack(rows)
    return _PROTOTYPES[key]


def alignment_parts(videos: torch.Tensor, prompts: Sequence[str], world: ToyWorld) -> Dict[str, torch.Tensor]:
    """Per-video colour, shape and direction scores in [0, 1] (before the presence gate)."""
    a = Analysis(videos)
    parsed = [world.parse(p) for p in prompts]
    dev = videos.device
    target = torch.tensor([COLOURS[c] for c, _, _ in parsed], dtype=torch.float32, device=dev)
    colour = torch.exp(-(a.foreground_colour() - target).pow(2).sum(dim=-1) / (2 * 0.2 ** 2))

    protos = shape_prototypes().to(dev)
    gaps = torch.cdist(protos, protos) + torch.eye(len(SHAPES), device=dev) * 1e9
    temperature = gaps.min().pow(2) / 8  # the right shape, matched exactly, wins by a factor e^8
    logits = -torch.cdist(a.shape_features(), protos).pow(2) / temperature
    shape_ids = torch.tensor([SHAPES.index(s) for _, s, _ in parsed], device=dev)
    shape = torch.softmax(logits, dim=-1).gather(1, shape_ids[:, None]).squeeze(1)

    unit = torch.tensor([DIRECTIONS[d] for _, _, d in parsed], dtype=torch.float32, device=dev)
    travel = a.velocity() * (videos.shape[1] - 1) / a.scale  # whole-clip displacement at 32x32 scale
    along = (travel * unit).sum(dim=-1)
    across = (travel[:, 0] * unit[:, 1] - travel[:, 1] * unit[:, 0]).abs()
    direction = torch.sigmoid(along - 3.0) * torch.exp(-(across / 6.0) ** 2)  # ground truth travels 7-14 px
    return {"colour": colour, "shape": shape, "direction": direction, "presence": a.presence}


def text_alignment(videos: torch.Tensor, prompts: Sequence[str], world: Optional[ToyWorld] = None) -> torch.Tensor:
    """Does the video show the prompt's colour, shape and direction: the mean of the
    three scores, times how surely a shape is present."""
    videos = _check("toy text_alignment", videos, prompts)
    parts = alignment_parts(videos, prompts, world or ToyWorld())
    score = parts["presence"] * (parts["colour"] + parts["shape"] + parts["direction"]) / 3
    return score.clamp(0, 1).float()


# ------------------------------------------------------------------------------ motion quality
def _shift(frames: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """frames [N, 3, H, W] translated by offset [N, 2] (x, y) pixels, bilinear, edge-padded."""
    n, _, h, w = frames.shape
    theta = torch.zeros(n, 2, 3, dtype=frames.dtype, device=frames.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * offset[:, 0] / w
    theta[:, 1, 2] = -2 * offset[:, 1] / h
    grid = F.affine_grid(theta, list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def motion_parts(videos: torch.Tensor) -> Dict[str, torch.Tensor]:
    a = Analysis(videos)
    b, f = videos.shape[:2]
    step = a.centroid[:, 1:] - a.centroid[:, :-1]  # [B, F-1, 2]
    if f >= 3:
        acceleration = (step[:, 1:] - step[:, :-1]).pow(2).sum(dim=-1).mean(dim=1) / a.scale ** 2
    else:
        acceleration = torch.zeros(b, device=videos.device)
    # Heavy-tailed scores (not Gaussian) keep a ranking among clearly flawed samples.
    constant_velocity = 1 / (1 + acceleration)  # mean squared acceleration, px^2 / frame^4
    size_variation = a.area.std(dim=1, unbiased=False) / (a.area.mean(dim=1) + EPS)
    constant_size = 1 / (1 + (size_variation / 0.2) ** 2)
    # Each frame should be the previous one moved by the centroid step (a rigid object
    # on a still background): the residual, relative to the content, measures flicker.
    prev, nxt = videos[:, :-1].flatten(0, 1), videos[:, 1:].flatten(0, 1)
    warped = _shift(prev, step.flatten(0, 1))
    bg = a.bg.repeat_interleave(f - 1, dim=0)[:, :, None, None]
    residual = (nxt - warped).abs().sum(dim=(1, 2, 3))
    content = ((nxt - bg).abs() + (warped - bg).abs()).sum(dim=(1, 2, 3))
    relative = (residual / (content + EPS)).view(b, f - 1).mean(dim=1)
    rigid = torch.exp(-relative / 0.3)
    return {"constant_velocity": constant_velocity, "constant_size": constant_size, "rigid": rigid,
            "object": a.compactness(), "presence": a.presence}


def motion_quality(videos: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Smooth, consistent motion of one object: constant centroid velocity, constant
    size, each frame a translated copy of the last (geometric mean), times presence
    and compactness (a stable haze of noise has a still centroid but is no object)."""
    videos = _check("toy motion_quality", videos, prompts)
    require(videos.shape[1] >= 2, f"toy motion_quality: videos need >= 2 frames; got {videos.shape[1]}")
    p = motion_parts(videos)
    smooth = (p["constant_velocity"] * p["constant_size"] * p["rigid"]).clamp_min(0).pow(1 / 3)
    score = p["presence"] * p["object"] * smooth
    return score.clamp(0, 1).float()


# ------------------------------------------------------------------------------ visual quality
def visual_parts(videos: torch.Tensor) -> Dict[str, torch.Tensor]:
    a = Analysis(videos)
    contrast = (a.foreground_colour() - a.bg).norm(dim=-1)
    strong_contrast = 1 - torch.exp(-(contrast / 0.4) ** 2)
    # Sharpness: for an edge of height h ramping over w pixels, sum(g^2) / (h sum(g)) = 1/w.
    gx = videos[..., :, 1:] - videos[..., :, :-1]
    gy = videos[..., 1:, :] - videos[..., :-1, :]
    grad = torch.sqrt(gx[..., :-1, :].pow(2).sum(dim=2) + gy[..., :, :-1].pow(2).sum(dim=2) + EPS)
    grad = grad - math.sqrt(EPS)
    edge_width = (contrast * grad.sum(dim=(1, 2, 3)) + EPS) / (grad.pow(2).sum(dim=(1, 2, 3)) + EPS)
    sharp = 1 - torch.exp(-(2.3 / edge_width) ** 2)  # rendered edges: ~1.5 px; a 1.5 px Gaussian blur: ~5
    compact = a.compactness()
    # A clean background: little colour left outside the shape.
    outside = 1 - a.mask
    leak = (outside * a.distance).sum(dim=(1, 2, 3)) / (outside.sum(dim=(1, 2, 3)) + EPS)
    clean = torch.exp(-leak / 0.08)
    return {"contrast": strong_contrast, "sharp": sharp, "compact": compact, "clean": clean, "presence": a.presence}


def visual_quality(videos: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Contrast between shape and background, sharp edges, one compact object, a clean
    background (geometric mean), times presence."""
    videos = _check("toy visual_quality", videos, prompts)
    p = visual_parts(videos)
    product = (p["contrast"] * p["sharp"] * p["compact"] * p["clean"]).clamp_min(0)
    return (p["presence"] * product.pow(1 / 4)).clamp(0, 1).float()


# ------------------------------------------------------------------------------ registry face
class ToyTextAlignment:
    name = "toy_text_alignment"

    def __init__(self, world: Optional[ToyWorld] = None):
        self.world = world or ToyWorld()

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return text_alignment(videos, prompts, self.world)


class ToyMotionQuality:
    name = "toy_motion"

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return motion_quality(videos, prompts)


class ToyVisualQuality:
    name = "toy_visual"

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return visual_quality(videos, prompts)


TOY_REWARDS = {cls.name: cls() for cls in (ToyTextAlignment, ToyMotionQuality, ToyVisualQuality)}
