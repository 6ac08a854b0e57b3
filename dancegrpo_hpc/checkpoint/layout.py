"""Names inside a checkpoint directory, and how a checkpoint is recognised as complete."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

from ..checks import require

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"  # size and digest of every file (checkpoint/manifest.py)
STAGING_SUFFIX = ".tmp"  # a checkpoint being written
REPLACED_SUFFIX = ".old"  # a complete checkpoint being replaced by one of the same iteration

_ITER_DIR = re.compile(r"^iter_(\d+)(\.old)?$")


def checkpoints_dir(output_dir) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def iteration_dir_name(iteration: int) -> str:
    require(isinstance(iteration, int) and iteration >= 0,
            f"checkpoint: iteration must be a non-negative int; got {iteration!r}")
    return f"iter_{iteration:07d}"


def tag_file(kind: str, shard_tag: str) -> str:
    require(isinstance(shard_tag, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", shard_tag or "") is not None,
            f"checkpoint: shard_tag must be a non-empty name of letters, digits, '_' or '-'; got {shard_tag!r}")
    return f"{kind}_{shard_tag}.safetensors"


def model_file(shard_tag: str) -> str:
    return tag_file("model", shard_tag)


def ema_file(shard_tag: str) -> str:
    return tag_file("ema", shard_tag)


def optimizer_file(rank: int) -> str:
    return f"optim_rank{rank}.pt"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def manifest_part_file(rank: int) -> str:
    return f"manifest_rank{rank}.json"


def is_complete(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / COMPLETE_MARKER).is_file()


def parse_iteration_dir(name: str) -> Optional[Tuple[int, bool]]:
    """(iteration, is_replaced_copy) for iter_<N> or iter_<N>.old; None otherwise
    (staging dirs and unrelated files)."""
    match = _ITER_DIR.match(name)
    return (int(match.group(1)), match.group(2) is not None) if match else None


def complete_checkpoints(root: Path) -> List[Tuple[int, Path]]:
    """Complete iter_<N> dirs in root, oldest first; an iter_<N>.old copy counts
    only while its iter_<N> is missing (a crash in the middle of a replacement)."""
    if not root.is_dir():
        return []
    found = {}
    for entry in root.iterdir():
        parsed = parse_iteration_dir(entry.name)
        if parsed is None or not is_complete(entry):
            continue
        iteration, replaced = parsed
        if not replaced or iteration not in found:
            found[iteration] = entry
    return sorted(found.items())
