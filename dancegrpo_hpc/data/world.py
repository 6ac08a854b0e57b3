"""The World interface: where a run's prompts, conditioning and decoding come from."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..conditioning import Conditioning


class World:
    """train_prompts / eval_prompts: lists of prompts; latent_shape: (C, F, H, W)."""

    train_prompts: List[str]
    eval_prompts: List[str]
    latent_shape: Tuple[int, int, int, int]

    def encode(self, prompts: List[str], device, negative: bool = False) -> Conditioning:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        """[B, C, F, H, W] latents -> [B, F, 3, H, W] videos in [0, 1]. cond: the samples'
        conditioning (image-to-video worlds whose first frame is the reference image's)."""
        raise NotImplementedError

    def load_policy(self, **options):
        raise NotImplementedError
