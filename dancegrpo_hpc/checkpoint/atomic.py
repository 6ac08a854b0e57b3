"""Crash-safe file writes: a file is written under a temporary name, fsynced and
renamed over its final name, so a reader sees either the old or the new file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
    """Makes renames inside `path` durable (the directory entry itself is data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: PathLike, write: Callable[[Path], None], tmp_suffix: str = ".tmp") -> None:
    """Calls write(tmp_path), then fsyncs and renames tmp_path to path.

    tmp_suffix lets several processes write the same final name without sharing
    a temporary file (the last rename wins; the contents are identical)."""
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
