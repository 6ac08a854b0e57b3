"""Atomic, resumable multi-rank checkpoints under <output_dir>/checkpoints/iter_<N>/,
with checksums verified on resume (a damaged checkpoint falls back to an older one)."""

from .config_change import apply_optimizer_settings, check_config_changes, normalise_allowed
from .layout import checkpoints_dir, is_complete
from .load import Checkpoint, find_latest, load_checkpoint, read_trainer_state, resolve_resume
from .manifest import file_digest, has_checksums
from .resume import check_rank_files, choose_checkpoint, resume_candidates
from .rng import capture_rng_state, restore_rng_state
from .save import save_checkpoint
from .state import TrainerState, check_same_layout

__all__ = [
    "Checkpoint", "TrainerState", "apply_optimizer_settings", "capture_rng_state", "check_config_changes",
    "check_rank_files", "check_same_layout", "checkpoints_dir", "choose_checkpoint", "file_digest", "find_latest",
    "has_checksums", "is_complete", "load_checkpoint", "normalise_allowed", "read_trainer_state", "resolve_resume",
    "restore_rng_state", "resume_candidates", "save_checkpoint",
]
