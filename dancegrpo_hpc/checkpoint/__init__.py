"""Atomic, resumable multi-rank checkpoints under <output_dir>/checkpoints/iter_<N>/."""

from .layout import checkpoints_dir, is_complete
from .load import Checkpoint, find_latest, load_checkpoint, read_trainer_state, resolve_resume
from .rng import capture_rng_state, restore_rng_state
from .save import save_checkpoint
from .state import TrainerState, check_same_layout

__all__ = [
    "Checkpoint", "TrainerState", "capture_rng_state", "check_same_layout", "checkpoints_dir", "find_latest",
    "is_complete", "load_checkpoint", "read_trainer_state", "resolve_resume", "restore_rng_state",
    "save_checkpoint",
]
