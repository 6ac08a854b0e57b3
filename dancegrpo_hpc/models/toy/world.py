"""A procedural video world: one coloured shape on a dark background moving in a
straight line at constant speed, described by prompts like "a red circle moving left".

Small enough to train a DiT on a laptop CPU in minutes, rich enough that prompts
held out of training (unseen colour x shape x direction combinations) test
compositional generalisation, and simple enough that rewards are programmatic.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...checks import InputError, check_choice, require

# Saturated colours far apart in RGB, so a mean foreground colour names one of them.
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.15),
    "blue": (0.2, 0.3, 1.0),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.95, 0.15, 0.95),
    "cyan": (0.1, 0.9, 0.95),
}
SHAPES = ("circle", "square", "triangle")
# Unit displacement per frame in (x, y) image coordinates (y grows downwards).
DIRECTIONS: Dict[str, Tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                              "down": (0.0, 1.0)}
FILLER_WORDS = ("a", "an", "the", "moving")
SPLITS = ("train", "eval")

# Shape size in pixels at 32x32 (circle radius; the others are scaled to a similar area),
# speed in pixels per frame; both scale with the frame size.
SIZE_RANGE = (3.5, 5.5)
SPEED_RANGE = (1.0, 2.0)
BACKGROUND_RANGE = (0.0, 0.12)  # grey level of the background


def make_prompt(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def _shape_distance(shape_ids: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of each pixel to each clip's shape.
    dx, dy: [B, F, H, W] offsets from the shape centre; size: [B, 1, 1, 1]."""
    circle = torch.sqrt(dx * dx + dy * dy) - size
    square = torch.maximum(dx.abs(), dy.abs()) - 0.9 * size
    # Equilateral triangle pointing up: the largest distance past its three edges
    # (edge normals down, up-left and up-right); inradius = half the circumradius 1.4*size.
    s60, c60 = math.sqrt(3) / 2, 0.5
    edges = torch.maximum(dy, torch.maximum(s60 * dx - c60 * dy, -s60 * dx - c60 * dy))
    triangle = edges - 0.7 * size
    ids = shape_ids.view(-1, 1, 1, 1)
    return torch.where(ids == 0, circle, torch.where(ids == 1, square, triangle))


class ToyWorld:
    """Clips of `frames` RGB frames of height x width. The colour x shape x direction
    combinations are split once (by `seed`) into train and held-out eval prompts."""

    colours = COLOURS
    shapes = SHAPES
    directions = DIRECTIONS

    def __init__(self, frames: int = 8, height: int = 32, width: int = 32, eval_fraction: float = 0.2, seed: int = 0):
        for name, value in (("frames", frames), ("height", height), ("width", width)):
            require(isinstance(value, int) and value >= 2, f"ToyWorld: {name} must be an int >= 2; got {value!r}")
        require(min(height, width) >= 16, f"ToyWorld: height and width must be >= 16 pixels; got {height}x{width}")
        require(isinstance(eval_fraction, (int, float)) and 0 <= eval_fraction < 1,
                f"ToyWorld: eval_fraction must lie in [0, 1); got {eval_fraction!r}")
        self.frames, self.height, self.width, self.seed = frames, height, width, seed
        self.eval_fraction = float(eval_fraction)
        self._split = self._make_split()

    # ------------------------------------------------------------------ prompts
    def all_prompts(self) -> List[str]:
        return [make_prompt(*c) for c in itertools.product(COLOURS, SHAPES, DIRECTIONS)]

    def _make_split(self) -> Dict[str, List[str]]:
        """A seeded random split, redrawn until every word appears in the train set
        (so eval prompts are new combinations of known words)."""
        combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
        n_eval = int(round(self.eval_fraction * len(combos)))
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(100):
            order = torch.randperm(len(combos), generator=gen).tolist()
            eval_ids, train_ids = sorted(order[:n_eval]), sorted(order[n_eval:])
            seen = {w for i in train_ids for w in combos[i]}
            if seen == set(COLOURS) | set(SHAPES) | set(DIRECTIONS):
                break
        return {"train": [make_prompt(*combos[i]) for i in train_ids],
                "eval": [make_prompt(*combos[i]) for i in eval_ids]}

    def prompts(self, split: str = "train") -> List[str]:
        check_choice("ToyWorld.prompts", "split", split, SPLITS)
        return list(self._split[split])

    @staticmethod
    def parse(prompt: str) -> Tuple[str, str, str]:
        """(colour, shape, direction) named by a prompt; filler words are ignored."""
        require(isinstance(prompt, str), f"ToyWorld.parse: prompt must be a str; got {type(prompt).__name__}")
        found: Dict[str, List[str]] = {"colour": [], "shape": [], "direction": []}
        for word in prompt.lower().replace(",", " ").replace(".", " ").split():
            if word in COLOURS:
                found["colour"].append(word)
            elif word in SHAPES:
                found["shape"].append(word)
            elif word in DIRECTIONS:
                found["direction"].append(word)
            elif word not in FILLER_WORDS:
                raise InputError(f"ToyWorld.parse: unknown word {word!r} in prompt {prompt!r}; the vocabulary is "
                                 f"colours {', '.join(COLOURS)}, shapes {', '.join(SHAPES)}, "
                                 f"directions {', '.join(DIRECTIONS)}")
        for kind, words in found.items():
            require(len(words) == 1, f"ToyWorld.parse: prompt {prompt!r} must name exactly one {kind}; got {words}")
        return found["colour"][0], found["shape"][0], found["direction"][0]

    # ------------------------------------------------------------------ rendering
    def render(self, prompts: Sequence[str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Float32 videos [B, F, 3, H, W] in [0, 1] with random start, size, speed and
        background level; the shape stays inside the frame (to within a pixel) on every frame."""
        require(len(prompts) > 0, "ToyWorld.render: prompts must be a non-empty list of str")
        parsed = [self.parse(p) for p in prompts]
        b, f, h, w = len(parsed), self.frames, self.height, self.width
        scale = min(h, w) / 32.0
        colour = torch.tensor([COLOURS[c] for c, _, _ in parsed], dtype=torch.float32)
        shape_ids = torch.tensor([SHAPES.index(s) for _, s, _ in parsed])
        direction = torch.tensor([DIRECTIONS[d] for _, _, d in parsed], dtype=torch.float32)

        u = torch.rand(b, 5, generator=generator)
        size = scale * (SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * u[:, 0])
        margin = 1.2 * size + 1.0  # the triangle's circumradius is 1.4*size; tolerate a little overlap
        extent = torch.tensor([w, h], dtype=torch.float32)
        room = extent - 2 * margin[:, None]  # [B, 2] free span of the centre along x and y
        travel_room = (direction.abs() * room).sum(dim=1)
        max_speed = torch.clamp(travel_room / (f - 1), max=scale * SPEED_RANGE[1])
        speed = torch.minimum(scale * SPEED_RANGE[0] * torch.ones(b), max_speed)
        speed = speed + (max_speed - speed) * u[:, 1]
        travel = speed * (f - 1)
        # Start anywhere that keeps the whole path inside [margin, extent - margin].
        lo = margin[:, None] + torch.clamp(-direction, min=0) * travel[:, None]
        hi = extent - margin[:, None] - torch.clamp(direction, min=0) * travel[:, None]
        start = lo + (hi - lo).clamp_min(0) * u[:, 2:4]
        background = BACKGROUND_RANGE[0] + (BACKGROUND_RANGE[1] - BACKGROUND_RANGE[0]) * u[:, 4]

        t = torch.arange(f, dtype=torch.float32)
        centre = start[:, None, :] + t[None, :, None] * speed[:, None, None] * direction[:, None, :]  # [B, F, 2]
        xs = torch.arange(w, dtype=torch.float32) + 0.5
        ys = torch.arange(h, dtype=torch.float32) + 0.5
        dx = xs.view(1, 1, 1, w) - centre[..., 0, None, None]
        dy = ys.view(1, 1, h, 1) - centre[..., 1, None, None]
        coverage = (0.5 - _shape_distance(shape_ids, dx, dy, size.view(b, 1, 1, 1))).clamp(0, 1)  # anti-aliased
        coverage = coverage.unsqueeze(2)  # [B, F, 1, H, W]
        bg = background.view(b, 1, 1, 1, 1)
        fg = colour.view(b, 1, 3, 1, 1)
        return (bg + (fg - bg) * coverage).contiguous()
