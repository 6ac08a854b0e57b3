"""Which keys each query may see in the joint sequence of a HunyuanVideo block.

The sequence is laid out as [video tokens | video padding | text tokens]: video
padding exists only so that the sequence splits evenly across sequence-parallel
ranks, and text is padded at its end (as diffusers lays it out). Invalid keys are
the video padding and each sample's text padding; queries see every valid key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch


@dataclass
class JointMask:
    video_tokens: int  # real video tokens, first in the sequence
    video_padding: int  # padding tokens after them
    text_tokens: int  # text tokens including text padding
    text_lengths: Optional[torch.Tensor]  # [B] valid text tokens per sample; None = all valid
    grid: Tuple[int, int, int]  # (frames, height, width) of the video token grid
    _prefixes: Optional[Tuple[int, ...]] = field(default=None, repr=False, compare=False)
    _lengths: Optional[Tuple[int, ...]] = field(default=None, repr=False, compare=False)

    @property
    def video_span(self) -> int:
        return self.video_tokens + self.video_padding

    @property
    def length(self) -> int:
        return self.video_span + self.text_tokens

    def key_prefixes(self, batch: int) -> Optional[Tuple[int, ...]]:
        """Per sample, the length of its valid keys when they form a prefix of the
        sequence (no video padding; text padding only at the end), else None. Read once
        per forward pass (a host sync on GPU) and cached."""
        if self.video_padding:
            return None
        if self._prefixes is None:
            if self.text_lengths is None:
                self._prefixes = (self.length,) * batch
            else:
                self._prefixes = tuple(self.video_span + n for n in self.text_lengths_host())
        return self._prefixes

    def text_lengths_host(self) -> Optional[Tuple[int, ...]]:
        """text_lengths as Python ints (None when absent): read once per forward pass (a
        host sync on GPU) and cached, so the blocks' attention calls key their caches on it."""
        if self.text_lengths is None:
            return None
        if self._lengths is None:
            self._lengths = tuple(int(n) for n in self.text_lengths.tolist())
        return self._lengths

    def all_valid(self) -> bool:
        """No invalid key at all: backends may run unmasked."""
        no_text_padding = self.text_lengths is None or bool((self.text_lengths == self.text_tokens).all())
        return self.video_padding == 0 and no_text_padding

    def key_valid(self, batch: int, device) -> torch.Tensor:
        """[B, S] bool."""
        idx = torch.arange(self.length, device=device)
        valid = (idx < self.video_tokens) | (idx >= self.video_span)
        valid = valid.unsqueeze(0).expand(batch, -1)
        if self.text_lengths is not None:
            text_end = self.video_span + self.text_lengths.to(device).view(-1, 1)
            valid = valid & (idx.unsqueeze(0) < text_end)
        return valid
