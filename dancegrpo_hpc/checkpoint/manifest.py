"""Checksums of every checkpoint file, recorded at save time and verified on resume.

Each rank hashes the files it wrote into manifest_rank<R>.json; rank 0 merges the
parts into manifest.json and records that file's own sha256 in the COMPLETE marker,
so a damaged or deleted manifest is caught too. A COMPLETE marker without that line
belongs to a checkpoint saved before checksums existed (verified by loading instead).

Digest: sha256 over the concatenated sha256 digests of 64 MiB chunks, hashed by a
few threads (hashlib releases the GIL), so a large shard (12.8 GB per TP rank for
HunyuanVideo 13B in bf16 at TP 2) is not limited to one core's sha256 speed; the
measured cost is in docs/TRAINING.md."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..checks import require
from . import layout as names
from .atomic import write_text_atomic

DIGEST_NAME = "sha256 of 64 MiB chunk sha256s"
CHUNK_BYTES = 64 << 20  # fixed forever: digests recorded with another chunk size would not compare
_READ_BYTES = 8 << 20  # per-thread read buffer
_MANIFEST_LINE = "manifest sha256 "


class CorruptFile(Exception):
    """A checkpoint file that is missing, truncated or differs from its recorded digest."""


def hash_threads() -> int:
    """Threads per rank: the node's cores shared by its ranks, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_rank))


def _chunk_digest(path: Path, index: int) -> bytes:
    digest = hashlib.sha256()
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        f.seek(index * CHUNK_BYTES)
        left = CHUNK_BYTES
        while left:
            count = f.readinto(view[: min(_READ_BYTES, left)])
            if not count:
                break
            digest.update(view[:count])
            left -= count
    return digest.digest()


def file_digest(path, threads: Optional[int] = None) -> str:
    path = Path(path)
    chunks = max(1, -(-path.stat().st_size // CHUNK_BYTES))
    workers = min(threads or hash_threads(), chunks)
    if workers == 1:
        parts = [_chunk_digest(path, i) for i in range(chunks)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda i: _chunk_digest(path, i), range(chunks)))
    return hashlib.sha256(b"".join(parts)).hexdigest()


def write_rank_manifest(staging: Path, rank: int, written: Iterable[str]) -> None:
    """Rank `rank`'s part: size and digest of each file it wrote into staging."""
    files = {name: {"size": (staging / name).stat().st_size, "sha256": file_digest(staging / name)}
             for name in written}
    write_text_atomic(staging / names.manifest_part_file(rank), json.dumps({"rank": rank, "files": files}, indent=1))


def merge_manifests(staging: Path, world_size: int) -> str:
    """Rank 0, after every rank wrote its part: one manifest.json (parts removed).
    Returns the line for the COMPLETE marker, which pins the manifest's own digest."""
    files: Dict[str, dict] = {}
    parts = [staging / names.manifest_part_file(rank) for rank in range(world_size)]
    for part in parts:
        for name, entry in json.loads(part.read_text(encoding="utf-8"))["files"].items():
            # two ranks writing one file must have written the same bytes (the last rename won)
            require(files.get(name, entry) == entry, f"checkpoint: ranks wrote different contents to {name} in "
                                                     f"{staging}; one rank per model shard may write it")
            files[name] = entry
    text = json.dumps({"digest": DIGEST_NAME, "chunk_bytes": CHUNK_BYTES, "files": dict(sorted(files.items()))},
                      indent=1)
    write_text_atomic(staging / names.MANIFEST_FILE, text)
    for part in parts:
        part.unlink()
    return _MANIFEST_LINE + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pinned_digest(path: Path) -> Optional[str]:
    marker = (path / names.COMPLETE_MARKER).read_text(encoding="utf-8", errors="replace")
    pinned = [line[len(_MANIFEST_LINE):].strip() for line in marker.splitlines() if line.startswith(_MANIFEST_LINE)]
    return pinned[0] if pinned else None


def has_checksums(path) -> bool:
    """False for a checkpoint saved before checksums were recorded."""
    return _pinned_digest(Path(path)) is not None


def read_manifest(path: Path) -> Optional[Dict[str, dict]]:
    """{file name: {"size", "sha256"}} of a checkpoint, or None when it was saved
    before checksums (no manifest line in COMPLETE). Raises CorruptFile when the
    manifest is missing or differs from the digest COMPLETE recorded."""
    pinned = _pinned_digest(path)
    if pinned is None:
        return None
    manifest = path / names.MANIFEST_FILE
    if not manifest.is_file():
        raise CorruptFile(f"{names.MANIFEST_FILE} is missing")
    data = manifest.read_bytes()
    if hashlib.sha256(data).hexdigest() != pinned:
        raise CorruptFile(f"{names.MANIFEST_FILE} is corrupt (its sha256 differs from the one in "
                          f"{names.COMPLETE_MARKER})")
    parsed = json.loads(data)
    if parsed.get("chunk_bytes") != CHUNK_BYTES:
        raise CorruptFile(f"{names.MANIFEST_FILE} uses {parsed.get('chunk_bytes')}-byte chunks; this version "
                          f"verifies {CHUNK_BYTES}")
    return parsed["files"]


def verify_files(path: Path, manifest: Dict[str, dict], wanted: List[str]) -> None:
    """Raises CorruptFile naming the first of `wanted` that is missing, truncated
    or whose content differs from its recorded digest."""
    for name in wanted:
        entry = manifest.get(name)
        if entry is None:
            raise CorruptFile(f"{name} is not listed in {names.MANIFEST_FILE}")
        file = path / name
        if not file.is_file():
            raise CorruptFile(f"{name} is missing")
        size = file.stat().st_size
        if size < entry["size"]:
            raise CorruptFile(f"{name} is truncated ({size} of {entry['size']} bytes)")
        if size != entry["size"]:
            raise CorruptFile(f"{name} has {size} bytes, {entry['size']} were saved")
        if file_digest(file) != entry["sha256"]:
            raise CorruptFile(f"{name} is corrupt (its content differs from the sha256 recorded at save time)")
