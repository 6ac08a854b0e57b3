"""Finding the checkpoint to resume from and reading one rank's share of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file

from ..checks import require
from . import layout as names
from .state import TrainerState, check_same_layout


@dataclass
class Checkpoint:
    path: Path
    model_state: Dict[str, torch.Tensor]
    ema_state: Optional[Dict[str, torch.Tensor]]
    optimizer_state: dict
    rng_state: Dict[str, Any]
    trainer_state: TrainerState


def find_latest(output_dir) -> Optional[Path]:
    """The checkpoint `latest` names; if that is missing or incomplete, the newest
    complete one; None when there is none. Staging (.tmp) dirs never count."""
    root = names.checkpoints_dir(output_dir)
    pointer = root / names.LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if names.parse_iteration_dir(name) is not None and names.is_complete(root / name):
            return root / name
    complete = names.complete_checkpoints(root)
    return complete[-1][1] if complete else None


def resolve_resume(resume: Optional[str], output_dir) -> Optional[Path]:
    """resume: "auto" (latest checkpoint in output_dir, or None for a fresh run),
    "none"/""/None (fresh run), or the path of a checkpoint directory."""
    if resume is None or str(resume).strip().lower() in ("", "none"):
        return None
    if str(resume).strip().lower() == "auto":
        return find_latest(output_dir)
    path = Path(resume)
    require(path.is_dir(), f"resume: checkpoint directory {path} does not exist; pass an existing "
                           "checkpoints/iter_<N> directory, 'auto' or 'none'")
    require(names.is_complete(path), f"resume: {path} has no {names.COMPLETE_MARKER} marker (its save was "
                                     "interrupted); pick a complete checkpoint or use resume=auto")
    return path


def read_trainer_state(path) -> TrainerState:
    path = Path(path)
    require(names.is_complete(path), f"checkpoint: {path} is not a complete checkpoint (no "
                                     f"{names.COMPLETE_MARKER} marker); use find_latest() or resolve_resume()")
    return TrainerState.from_json((path / names.TRAINER_STATE_FILE).read_text(encoding="utf-8"))


def _require_file(path: Path, what: str, fix: str) -> Path:
    require(path.is_file(), f"checkpoint: {path.parent} has no {path.name} ({what}); {fix}")
    return path


def load_checkpoint(path, *, rank: int, shard_tag: str, world_size: int, layout: Dict[str, Any]) -> Checkpoint:
    """Reads what `rank` needs: its model (and EMA) shard, its optimizer and RNG
    state, and the trainer state. Tensors come back on the CPU. Fails with a
    clear message when world_size or layout differ from the saved run."""
    path = Path(path)
    trainer_state = read_trainer_state(path)
    check_same_layout(trainer_state, world_size=world_size, layout=layout, where="resume")
    available = sorted(p.name for p in path.glob("model_*.safetensors"))
    model_path = _require_file(path / names.model_file(shard_tag), f"model shard {shard_tag!r}",
                               f"shard tags saved: {', '.join(available) or 'none'}")
    ema_path = path / names.ema_file(shard_tag)
    optim_path = _require_file(path / names.optimizer_file(rank), f"optimizer state of rank {rank}",
                               "resume with the world size the checkpoint was saved with")
    rng_path = _require_file(path / names.rng_file(rank), f"RNG state of rank {rank}",
                             "resume with the world size the checkpoint was saved with")
    return Checkpoint(
        path=path,
        model_state=load_file(str(model_path)),
        ema_state=load_file(str(ema_path)) if ema_path.is_file() else None,
        optimizer_state=torch.load(optim_path, map_location="cpu", weights_only=True),
        rng_state=torch.load(rng_path, map_location="cpu", weights_only=True),
        trainer_state=trainer_state,
    )
