"""Where prompts, conditioning and decoding come from: a `World` per data source.

A world gives train / held-out prompts, turns prompts into conditioning, decodes
latents into videos for the rewards, and builds the policy model.
"""

from .build import build_world
from .world import World

__all__ = ["World", "build_world"]
