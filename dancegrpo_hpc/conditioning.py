"""Conditioning: a model family's per-sample conditioning tensors, by name.

Family-neutral: the family names its tensors (HunyuanVideo: embeds [N, L, D], mask [N, L],
pooled [N, P], image_latents [N, C, 1, h, w] for image-to-video; FLUX: embeds, pooled;
...), every tensor has the samples on dim 0, and the engine only selects, moves and
concatenates samples. `negative` holds the unconditional branch for real CFG."""

from __future__ import annotations

from typing import Dict, Optional

import torch


class Conditioning:
    def __init__(self, negative: Optional["Conditioning"] = None, **tensors: Optional[torch.Tensor]):
        self.tensors: Dict[str, torch.Tensor] = {k: v for k, v in tensors.items() if v is not None}
        if not self.tensors:
            raise ValueError("Conditioning: no tensors given")
        sizes = {k: v.shape[0] for k, v in self.tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Conditioning: tensors disagree on the number of samples: {sizes}")
        self.negative = negative

    def __getattr__(self, name: str):
        # only called for names that are not attributes: a named tensor, None if absent
        if name.startswith("__") or name == "tensors":
            raise AttributeError(name)
        return self.tensors.get(name)

    def _map(self, fn) -> "Conditioning":
        neg = self.negative._map(fn) if self.negative is not None else None
        return Conditioning(neg, **{k: fn(v) for k, v in self.tensors.items()})

    def select(self, index) -> "Conditioning":
        return self._map(lambda t: t[index.to(t.device) if torch.is_tensor(index) else index])

    def to(self, device) -> "Conditioning":
        return self._map(lambda t: t.to(device))

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getstate__(self):
        return {"tensors": self.tensors, "negative": self.negative}

    def __setstate__(self, state):
        self.__dict__.update(state)


def cat(a: Conditioning, b: Conditioning) -> Conditioning:
    """The samples of a then b (the negative branches are dropped)."""
    if set(a.tensors) != set(b.tensors):
        raise ValueError(f"Conditioning: cannot concatenate {sorted(a.tensors)} with {sorted(b.tensors)}")
    return Conditioning(**{k: torch.cat([a.tensors[k], b.tensors[k]]) for k in a.tensors})
