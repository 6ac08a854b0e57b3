"""Process groups: tensor parallelism (TP, optionally with Megatron sequence
parallelism) and Ulysses sequence parallelism, from megatron-core's parallel_state.

Ulysses uses megatron-core's context-parallel group: it is orthogonal to TP and
its ranks see different parts of the sequence with replicated weights, so their
gradients are reduced together with data parallelism (megatron's dp x cp group),
exactly as for Megatron's own context parallelism.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..checks import InputError, require
from . import megatron_compat


@dataclass(frozen=True)
class ParallelLayout:
    """How one model replica is split: tp (tensor parallel), sequence_parallel
    (Megatron SP within the TP group) and ulysses (sequence parallel by all-to-all)."""

    tp: int = 1
    sequence_parallel: bool = False
    ulysses: int = 1

    def validate(self, num_heads: int) -> None:
        require(self.tp >= 1 and self.ulysses >= 1, f"parallel layout: tp and ulysses must be >= 1; got {self}")
        require(
            num_heads % (self.tp * self.ulysses) == 0,
            f"parallel layout: attention heads ({num_heads}) must be divisible by tp x ulysses "
            f"({self.tp} x {self.ulysses} = {self.tp * self.ulysses}); choose sizes whose product divides {num_heads}",
        )
        require(not self.sequence_parallel or self.tp > 1,
                "parallel layout: sequence_parallel needs tp > 1 (it shards activations within the TP group)")

    @property
    def sequence_shards(self) -> int:
        """Number of pieces the token sequence is cut into between blocks."""
        return self.ulysses * (self.tp if self.sequence_parallel else 1)


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def initialize(tp: int = 1, ulysses: int = 1, backend: Optional[str] = None, seed: int = 0) -> None:
    """Initialises torch.distributed (from torchrun's environment, or a one-process
    world when none is set) and megatron-core's groups, and seeds megatron-core's CUDA
    RNG tracker (seed_model_parallel_rng). On CPU it also enables megatron_compat so
    megatron-core's communication runs over gloo."""
    from megatron.core import parallel_state

    if not dist.is_initialized():
        backend = backend or _default_backend()
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    world = dist.get_world_size()
    require(world % (tp * ulysses) == 0,
            f"parallel layout: world size {world} is not divisible by tp x ulysses = {tp * ulysses}")
    if dist.get_backend() == "gloo":
        megatron_compat.enable_cpu()
    if parallel_state.model_parallel_is_initialized():
        same = (parallel_state.get_tensor_model_parallel_world_size() == tp
                and parallel_state.get_context_parallel_world_size() == ulysses)
        if not same:
            raise InputError(
                f"parallel layout: groups already initialised with tp={parallel_state.get_tensor_model_parallel_world_size()}, "
                f"ulysses={parallel_state.get_context_parallel_world_size()}; call destroy() before changing them"
            )
        seed_model_parallel_rng(seed)
        return
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=ulysses)
    seed_model_parallel_rng(seed)


def model_parallel_seeds(seed: int, tp_rank: int) -> dict:
    """The seeds megatron-core's model_parallel_cuda_manual_seed gives its tracker's
    states on a rank: data-parallel = seed on every rank, model-parallel = seed + 2718 +
    tp_rank (distinct per TP rank, the same across data-parallel and Ulysses replicas)."""
    return {"data-parallel-rng": seed, "model-parallel-rng": seed + 2718 + tp_rank}


def seed_model_parallel_rng(seed: int) -> bool:
    """Seeds megatron-core's CUDA RNG tracker, from which its parallel linears draw their
    GPU weight init (`get_cuda_rng_tracker().fork()`; unseeded, building a model on CUDA
    raises "cuda rng state model-parallel-rng is not added"). Idempotent: megatron resets
    the tracker before adding its states. The process's own CUDA RNG state is kept (megatron
    re-seeds it; our sampling draws from explicit generators, rl/seeding.py, but a caller's
    torch.cuda RNG must not change under it). Returns False without CUDA: there the
    linears initialise on the CPU (use_cpu_initialization) and no tracker is read."""
    if not torch.cuda.is_available():
        return False
    from megatron.core import parallel_state, tensor_parallel

    require(0 <= seed < 2**63, f"parallel.initialize: seed must lie in [0, 2^63); got {seed}")
    saved = torch.cuda.get_rng_state()
    try:
        tensor_parallel.model_parallel_cuda_manual_seed(seed, tp_rank=parallel_state.get_tensor_model_parallel_rank())
    finally:
        torch.cuda.set_rng_state(saved)
    return True


def ensure_initialized() -> None:
    """A one-process world with tp = ulysses = 1, unless groups already exist."""
    from megatron.core import parallel_state

    if not (dist.is_initialized() and parallel_state.model_parallel_is_initialized()):
        initialize(1, 1)


def destroy() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    megatron_compat.disable_cpu()


@dataclass
class ParallelContext:
    """The groups a model replica runs with, read from megatron-core's parallel_state."""

    layout: ParallelLayout
    tp_group: Optional[dist.ProcessGroup]
    ulysses_group: Optional[dist.ProcessGroup]
    tp_rank: int
    ulysses_rank: int

    @staticmethod
    def current(sequence_parallel: bool = False) -> "ParallelContext":
        from megatron.core import parallel_state as ps

        ensure_initialized()
        tp, u = ps.get_tensor_model_parallel_world_size(), ps.get_context_parallel_world_size()
        layout = ParallelLayout(tp=tp, sequence_parallel=sequence_parallel and tp > 1, ulysses=u)
        return ParallelContext(layout, ps.get_tensor_model_parallel_group(), ps.get_context_parallel_group(),
                               ps.get_tensor_model_parallel_rank(), ps.get_context_parallel_rank())

    @property
    def shard_index(self) -> int:
        """This rank's piece of the sequence between blocks: Ulysses-major, then TP."""
        if self.layout.sequence_parallel:
            return self.ulysses_rank * self.layout.tp + self.tp_rank
        return self.ulysses_rank
