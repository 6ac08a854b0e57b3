"""build_world: the World that config.data.source names."""

from __future__ import annotations

from .world import World


def build_world(config, device="cpu") -> World:
    """The world config.data names; device: where the real world's VAE and text encoders run."""
    if config.data.source == "toy":
        from .toy_world import ToyWorldAdapter

        return ToyWorldAdapter(config)
    if config.data.source == "prompts":
        from .real_world import PromptWorld

        return PromptWorld(config, device)
    raise ValueError(f"data.source {config.data.source!r} is not supported")
