"""Deterministic random streams derived from (seed, purpose, indices).

Every random draw of a run comes from a stream named by what it is for and the
global indices it belongs to (iteration, prompt, sample): results do not depend
on how samples are batched or spread over ranks, and a resumed run draws exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
from typing import Callable, List, Sequence

import torch


def derive_seed(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def stream(device, *parts) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def randn_per_sample(seeds: Sequence[int], shape, device, dtype=torch.float32) -> torch.Tensor:
    """One normal draw of `shape` per seed, stacked: [len(seeds), *shape]."""
    out = torch.empty((len(seeds), *shape), device=device, dtype=dtype)
    for i, seed in enumerate(seeds):
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        torch.randn(shape, generator=g, device=device, dtype=dtype, out=out[i])
    return out


def per_sample_noise(seeds: Sequence[int], shape, device, dtype=torch.float32) -> Callable[[int], torch.Tensor]:
    """noise_fn(step) for `sample`: each sample draws its steps from its own stream."""
    generators: List[torch.Generator] = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        generators.append(g)
    out = torch.empty((len(seeds), *shape), device=device, dtype=dtype)

    def noise_fn(step: int) -> torch.Tensor:
        for i, g in enumerate(generators):
            torch.randn(shape, generator=g, device=device, dtype=dtype, out=out[i])
        return out

    return noise_fn
