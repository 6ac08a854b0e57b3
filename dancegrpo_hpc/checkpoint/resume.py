"""Choosing the checkpoint to resume from: the newest one whose files are intact
for every rank, the same one on every rank.

A requeued job must not crash-loop on a checkpoint damaged by the crash (or by the
file system): each rank checks the files it will read (against manifest.json, or by
loading them when the checkpoint predates checksums), the ranks pool their findings,
and all of them step back to the next older checkpoint when any rank found damage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ..checks import InputError
from . import layout as names
from .load import resolve_resume
from .manifest import CorruptFile, has_checksums, read_manifest, verify_files
from .state import TrainerState, check_same_layout

# what one rank reports about one checkpoint: None (intact), ("corrupt", why) or ("refused", one-line error)
Finding = Optional[Tuple[str, str]]


def resume_candidates(resume: Optional[str], output_dir) -> List[Path]:
    """Checkpoints to try, best first. resume=auto: the one `latest` names, then the
    complete ones older than it (newer ones belong to a run branched off earlier);
    without a usable `latest`, every complete one, newest first. A path: just it."""
    if resume is None or str(resume).strip().lower() != "auto":
        path = resolve_resume(resume, output_dir)
        return [path] if path is not None else []
    root = names.checkpoints_dir(output_dir)
    complete = names.complete_checkpoints(root)
    pointer = root / names.LATEST_FILE
    named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    parsed = names.parse_iteration_dir(named)
    if parsed is not None and not parsed[1] and names.is_complete(root / named):
        return [root / named] + [path for iteration, path in reversed(complete) if iteration < parsed[0]]
    return [path for _, path in reversed(complete)]


def _unreadable(name: str, error: BaseException) -> CorruptFile:
    detail = (str(error).strip().splitlines() or [""])[0][:160]
    return CorruptFile(f"{name} is unreadable ({type(error).__name__}: {detail})")


def _rank_files(rank: int, shard_tag: str, listed) -> List[str]:
    ema = names.ema_file(shard_tag)
    wanted = [names.model_file(shard_tag), names.optimizer_file(rank), names.rng_file(rank)]
    return wanted + ([ema] if ema in listed else [])


def check_rank_files(path, *, rank: int, shard_tag: str, world_size: int, layout: Dict[str, Any]) -> Finding:
    """What this rank finds in checkpoint `path`: the trainer state and the files
    this rank loads, verified against manifest.json (or, for a checkpoint saved
    before checksums, by loading each of them). A layout this run cannot resume
    is a refusal, not damage: an older checkpoint of the same run has it too."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
        if manifest is not None:
            verify_files(path, manifest, [names.TRAINER_STATE_FILE])
        try:
            state = TrainerState.from_json((path / names.TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        except Exception as error:  # noqa: BLE001 - any parse failure means a damaged file
            raise _unreadable(names.TRAINER_STATE_FILE, error) from None
        check_same_layout(state, world_size=world_size, layout=layout, where="resume")
        if manifest is not None:
            verify_files(path, manifest, _rank_files(rank, shard_tag, manifest))
        else:
            _load_each(path, _rank_files(rank, shard_tag, {p.name for p in path.iterdir()}))
    except CorruptFile as error:
        return ("corrupt", str(error))
    except InputError as error:
        return ("refused", str(error))
    except Exception as error:  # noqa: BLE001 - e.g. an unreadable COMPLETE marker; never desynchronise the ranks
        return ("corrupt", f"verification failed ({type(error).__name__}: {error})")
    return None


def _load_each(path: Path, files: List[str]) -> None:
    """A checkpoint without checksums: each file must at least load."""
    for name in files:
        file = path / name
        if not file.is_file():
            raise CorruptFile(f"{name} is missing")
        try:
            if name.endswith(".safetensors"):
                load_file(str(file))
            else:
                torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - SafetensorError, UnpicklingError, EOFError, RuntimeError, ...
            raise _unreadable(name, error) from None


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_findings(finding: Finding) -> List[Finding]:
    """Every rank's finding, in rank order, on every rank."""
    if _world() == 1:
        return [finding]
    found: List[Finding] = [None] * _world()
    dist.all_gather_object(found, finding)
    return found


def broadcast_paths(paths: List[Path]) -> List[Path]:
    """Rank 0's list on every rank, so all ranks walk the same candidates."""
    if _world() == 1:
        return paths
    box = [[str(p) for p in paths]]
    dist.broadcast_object_list(box, src=0)
    return [Path(p) for p in box[0]]


def choose_checkpoint(resume: Optional[str], output_dir, *, rank: int, shard_tag: str, world_size: int,
                      layout: Dict[str, Any], report: Optional[Callable[[str], None]] = None,
                      check: Callable[..., Finding] = check_rank_files) -> Optional[Path]:
    """Collective: the checkpoint to resume from, the same on every rank (None for
    a fresh run). A damaged candidate is skipped with one line through `report`
    naming the file and what is wrong with it; no intact one raises InputError."""
    candidates = broadcast_paths(resume_candidates(resume, output_dir))
    damaged: List[str] = []
    for path in candidates:
        findings = gather_findings(check(path, rank=rank, shard_tag=shard_tag, world_size=world_size, layout=layout))
        refused = [f[1] for f in findings if f is not None and f[0] == "refused"]
        if refused:
            raise InputError(refused[0])
        bad = [(r, f[1]) for r, f in enumerate(findings) if f is not None]
        if bad:
            damaged.append(f"{path.name}: {bad[0][1]}" + (f" (rank {bad[0][0]})" if len(findings) > 1 else ""))
            continue
        if report is not None:
            for line in damaged:
                report(f"[resume] skipping {line}; falling back to an older checkpoint")
            if not has_checksums(path):
                report(f"[resume] {path.name} predates checksums (no {names.MANIFEST_FILE}): its files load, "
                       "their content is unverified")
        return path
    if not candidates:
        return None
    if str(resume).strip().lower() != "auto":
        raise InputError(f"resume: checkpoint {candidates[0].parent}/{damaged[0]}; pass another checkpoint "
                         "directory or --resume auto")
    raise InputError(f"resume: no intact checkpoint in {names.checkpoints_dir(output_dir)}: {'; '.join(damaged)}; "
                     "restore one from a backup or start fresh with --resume none")
