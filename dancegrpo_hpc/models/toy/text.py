"""A tiny fixed text encoder for the toy world's vocabulary. Its weights come from a
seed (nothing to train or download): a random token table plus sinusoidal
positions for the per-token embeddings, and a random projection of the mean token
embedding for the pooled vector, the two inputs a HunyuanVideo DiT conditions on."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...checks import InputError, require
from .world import COLOURS, DIRECTIONS, FILLER_WORDS, SHAPES

BOS = "<s>"  # every prompt starts with it, so an empty prompt (CFG's negative) has one valid token
VOCABULARY: Tuple[str, ...] = (BOS, *FILLER_WORDS, *COLOURS, *SHAPES, *DIRECTIONS)


def _sinusoids(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(100.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class ToyTextEncoder(nn.Module):
    """encode(prompts) -> (embeds [B, max_tokens, embed_dim] float32 (zeros at padding),
    mask [B, max_tokens] long, pooled [B, pooled_dim] float32 with unit RMS)."""

    vocabulary = VOCABULARY

    def __init__(self, embed_dim: int = 32, pooled_dim: int = 32, max_tokens: int = 8, seed: int = 0):
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("pooled_dim", pooled_dim), ("max_tokens", max_tokens)):
            require(isinstance(value, int) and value >= 2, f"ToyTextEncoder: {name} must be an int >= 2; got {value!r}")
        require(embed_dim % 2 == 0, f"ToyTextEncoder: embed_dim must be even (sinusoidal positions); got {embed_dim}")
        self.embed_dim, self.pooled_dim, self.max_tokens = embed_dim, pooled_dim, max_tokens
        gen = torch.Generator().manual_seed(seed)
        self.ids = {word: i for i, word in enumerate(VOCABULARY)}
        self.register_buffer("tokens", torch.randn(len(VOCABULARY), embed_dim, generator=gen), persistent=False)
        self.register_buffer("positions", _sinusoids(max_tokens, embed_dim).float(), persistent=False)
        projection = torch.randn(embed_dim, pooled_dim, generator=gen) / math.sqrt(embed_dim)
        self.register_buffer("projection", projection, persistent=False)

    def tokenize(self, prompt: str) -> List[int]:
        require(isinstance(prompt, str), f"ToyTextEncoder: prompts must be str; got {type(prompt).__name__}")
        words = prompt.lower().replace(",", " ").replace(".", " ").split()
        unknown = [w for w in words if w not in self.ids or w == BOS]
        if unknown:
            raise InputError(f"ToyTextEncoder: unknown word {unknown[0]!r} in prompt {prompt!r}; the vocabulary is "
                             f"{', '.join(VOCABULARY[1:])}")
        require(len(words) + 1 <= self.max_tokens,
                f"ToyTextEncoder: prompt {prompt!r} has {len(words)} words but max_tokens={self.max_tokens} allows "
                f"{self.max_tokens - 1} (plus the start token)")
        return [self.ids[BOS]] + [self.ids[w] for w in words]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: Optional[torch.device] = None):
        require(not isinstance(prompts, str) and len(prompts) > 0,
                "ToyTextEncoder.encode: prompts must be a non-empty list of str")
        ids = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = self.tokenize(prompt)
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        ids, mask = ids.to(self.tokens.device), mask.to(self.tokens.device)
        valid = mask.unsqueeze(-1).float()
        words = self.tokens[ids] * valid
        embeds = (words + self.positions * valid).contiguous()
        mean = words.sum(dim=1) / valid.sum(dim=1)
        pooled = mean @ self.projection
        pooled = pooled / pooled.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-6)
        if device is not None:
            embeds, mask, pooled = embeds.to(device), mask.to(device), pooled.to(device)
        return embeds, mask, pooled

    def forward(self, prompts: Sequence[str]):
        return self.encode(prompts)
