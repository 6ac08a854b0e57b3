"""Writes one checkpoint from every rank so that a kill at any moment leaves the
`latest` pointer on either the previous complete checkpoint or the new one.

Protocol: all ranks write into iter_<N>.tmp and hash what they wrote
(manifest_rank<R>.json); barrier; rank 0 checks every rank's files, merges the
hashes into manifest.json, marks the staging dir COMPLETE (pinning the manifest's
digest), renames it to iter_<N>, then repoints `latest`; barrier."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from safetensors.torch import save_file

from ..checks import require
from . import layout as names
from .atomic import fsync_dir, write_atomic, write_text_atomic
from .manifest import merge_manifests, write_rank_manifest
from .rng import capture_rng_state
from .state import TrainerState


def default_barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _safetensors_ready(state: Dict[str, torch.Tensor], where: str) -> Dict[str, torch.Tensor]:
    """safetensors refuses non-contiguous tensors and tensors sharing storage;
    copy only those (and move to CPU), keeping dtypes."""
    ready, seen_storages = {}, set()
    for name, tensor in state.items():
        require(isinstance(tensor, torch.Tensor), f"{where}: entry {name!r} must be a tensor; got {type(tensor).__name__}")
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage()
        whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and storage.nbytes() == tensor.nbytes
        if not whole or storage.data_ptr() in seen_storages:
            tensor = tensor.contiguous().clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        ready[name] = tensor
    return ready


def _write_tensors(path: Path, state, rank: int, iteration: int, where: str) -> None:
    tensors = _safetensors_ready(state, where)
    metadata = {"iteration": str(iteration)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), tmp_suffix=f".rank{rank}.tmp")


def _write_torch(path: Path, obj) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _check_all_ranks_wrote(staging: Path, world_size: int) -> None:
    missing = [name for rank in range(world_size)
               for name in (names.optimizer_file(rank), names.rng_file(rank), names.manifest_part_file(rank))
               if not (staging / name).is_file()]
    require(not missing, f"checkpoint: {staging} lacks {', '.join(missing)}; every rank must call "
                         "save_checkpoint for the same iteration with the same world_size")


def _publish(root: Path, staging: Path, final: Path, iteration: int, manifest_line: str) -> None:
    """Rank 0: COMPLETE marker, rename into place, repoint `latest`."""
    write_text_atomic(staging / names.COMPLETE_MARKER, f"{iteration}\n{manifest_line}\n")
    replaced = final.with_name(final.name + names.REPLACED_SUFFIX)
    if final.exists():
        # keep the old copy findable (find_latest accepts it) until the new one is in place
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    fsync_dir(root)
    write_text_atomic(root / names.LATEST_FILE, final.name + "\n")
    shutil.rmtree(replaced, ignore_errors=True)


def prune_checkpoints(root: Path, just_saved: int, keep_last: Optional[int]) -> None:
    """Removes leftovers of crashed saves, then keeps the keep_last newest
    checkpoints up to just_saved; newer ones (from a run this one branched off by
    resuming earlier) are left alone."""
    for entry in list(root.iterdir()):
        stale_staging = entry.name.endswith(names.STAGING_SUFFIX) and \
            names.parse_iteration_dir(entry.name[: -len(names.STAGING_SUFFIX)]) is not None
        parsed = names.parse_iteration_dir(entry.name)
        superseded_copy = parsed is not None and parsed[1] and names.is_complete(
            root / entry.name[: -len(names.REPLACED_SUFFIX)])
        if stale_staging or superseded_copy:
            shutil.rmtree(entry, ignore_errors=True)
    if keep_last is None:
        return
    older = [path for iteration, path in names.complete_checkpoints(root) if iteration <= just_saved]
    for path in older[: max(len(older) - keep_last, 0)]:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    output_dir,
    iteration: int,
    *,
    rank: int,
    world_size: int,
    model_state: Dict[str, torch.Tensor],
    writes_model: bool,
    shard_tag: str,
    optimizer_state: dict,
    trainer_state: Optional[TrainerState],
    ema_state: Optional[Dict[str, torch.Tensor]] = None,
    keep_last: Optional[int] = 2,
    barrier: Callable[[], None] = default_barrier,
) -> Path:
    """Collective: every rank calls it with the same iteration. Returns the
    checkpoint directory <output_dir>/checkpoints/iter_<N>.

    writes_model: true on one rank per distinct model shard (its model and EMA
    tensors go to model_<shard_tag>/ema_<shard_tag>.safetensors). Every rank
    writes its optimizer state (ZeRO-sharded) and RNG state; rank 0 writes
    trainer_state. keep_last=None keeps every checkpoint."""
    require(isinstance(world_size, int) and world_size >= 1, f"checkpoint: world_size must be >= 1; got {world_size!r}")
    require(isinstance(rank, int) and 0 <= rank < world_size,
            f"checkpoint: rank must lie in [0, {world_size}); got {rank!r}")
    require(keep_last is None or (isinstance(keep_last, int) and keep_last >= 1),
            f"checkpoint: keep_last must be a positive int or None (keep all); got {keep_last!r}")
    require(isinstance(optimizer_state, dict), f"checkpoint: optimizer_state must be a dict (optimizer.state_dict()); "
                                               f"got {type(optimizer_state).__name__}")
    dir_name = names.iteration_dir_name(iteration)
    names.model_file(shard_tag)  # validates the tag on every rank before any I/O
    trainer_json = None
    if rank == 0:
        require(isinstance(trainer_state, TrainerState), "checkpoint: rank 0 must pass trainer_state (a TrainerState)")
        require(trainer_state.iteration == iteration and trainer_state.world_size == world_size,
                f"checkpoint: trainer_state says iteration={trainer_state.iteration}, world_size="
                f"{trainer_state.world_size} but save_checkpoint got iteration={iteration}, world_size={world_size}")
        trainer_json = trainer_state.to_json()

    root = names.checkpoints_dir(output_dir)
    staging, final = root / (dir_name + names.STAGING_SUFFIX), root / dir_name
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a crashed save
        staging.mkdir(parents=True)
    barrier()
    staging.mkdir(parents=True, exist_ok=True)

    written = []
    if writes_model:
        written.append(names.model_file(shard_tag))
        _write_tensors(staging / written[-1], model_state, rank, iteration, "checkpoint model_state")
        if ema_state is not None:
            written.append(names.ema_file(shard_tag))
            _write_tensors(staging / written[-1], ema_state, rank, iteration, "checkpoint ema_state")
    written += [names.optimizer_file(rank), names.rng_file(rank)]
    _write_torch(staging / written[-2], optimizer_state)
    _write_torch(staging / written[-1], capture_rng_state())
    if rank == 0:
        written.append(names.TRAINER_STATE_FILE)
        write_text_atomic(staging / written[-1], trainer_json)
    write_rank_manifest(staging, rank, written)
    barrier()

    if rank == 0:
        _check_all_ranks_wrote(staging, world_size)
        _publish(root, staging, final, iteration, merge_manifests(staging, world_size))
        prune_checkpoints(root, iteration, keep_last)
    barrier()
    return final
