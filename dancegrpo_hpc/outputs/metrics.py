"""metrics.jsonl (one JSON object per iteration, durable line by line) and the
matching TensorBoard scalars. Strict JSON: a NaN or infinite value (e.g. reward_mean
when every group was dropped) is written as null."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..checks import InputError, require
from ..checkpoint.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _parse(text: str, path) -> List[Dict[str, Any]]:
    """A last line without its newline is a write cut short by a kill: kept when
    it parses, dropped otherwise. A bad line before it is corruption: raised."""
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise InputError(f"metrics: {path} line {number} is not valid JSON; repair or delete the file") from None
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except json.JSONDecodeError:
            pass
    return records


def read_metrics(path) -> List[Dict[str, Any]]:
    """Records of a metrics.jsonl file (or of <output_dir>/metrics.jsonl)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    require(path.is_file(), f"metrics: {path} does not exist; pass a metrics.jsonl file or a run's output_dir")
    return _parse(path.read_text(encoding="utf-8"), path)


def _plain(value: Any) -> Any:
    """Tensors and numpy values to Python numbers and lists so they serialise as JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if not isinstance(value, (str, int, float, bool)) and hasattr(value, "tolist"):
        return value.tolist()
    return value


def strict_json(value: Any) -> Any:
    """NaN and +-inf become None (JSON null): json.dumps would write bare NaN / Infinity,
    which strict JSON parsers (jq, JavaScript, Go) reject."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scalars(metrics: Dict[str, Any], prefix: str = ""):
    """(tag, number) pairs; nested dicts become tag/subtag."""
    for key, value in metrics.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _scalars(value, tag + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield tag, float(value)


def _summary_writer(log_dir: Path, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("logging.tensorboard: the tensorboard package is not installed; "
                         "`pip install tensorboard` or set logging.tensorboard=false") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsLog:
    """Appends one record per iteration to <output_dir>/metrics.jsonl (flushed and
    fsynced per line) and, when tensorboard=True, its numbers as scalars under
    <output_dir>/tensorboard.

    resume_iteration=None starts a fresh log (an existing file is replaced);
    resume_iteration=N keeps the records with iteration <= N, so a resumed run
    appends without duplicates (and TensorBoard hides earlier events after N)."""

    def __init__(self, output_dir, tensorboard: bool = True, resume_iteration: Optional[int] = None):
        require(resume_iteration is None or (isinstance(resume_iteration, int) and resume_iteration >= 0),
                f"metrics: resume_iteration must be a non-negative int or None; got {resume_iteration!r}")
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_FILE
        kept = []
        if resume_iteration is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("iteration", math.inf) <= resume_iteration]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.last_iteration = resume_iteration
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            # TensorBoard hides earlier events from this step on: a fresh run hides all of them
            purge_step = 0 if resume_iteration is None else resume_iteration + 1
            self._writer = _summary_writer(self.output_dir / TENSORBOARD_DIR, purge_step)

    def log(self, iteration: int, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """Writes {"iteration": iteration, **metrics}; returns that record."""
        require(isinstance(iteration, int) and (self.last_iteration is None or iteration > self.last_iteration),
                f"metrics: iteration must be an int above the last logged one ({self.last_iteration}); "
                f"got {iteration!r}")
        record = strict_json({"iteration": iteration, **_plain(dict(metrics))})
        try:
            line = json.dumps(record, allow_nan=False)
        except TypeError as error:
            raise InputError(f"metrics: values must be numbers, strings, lists or dicts ({error})") from None
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._writer is not None:
            for tag, value in _scalars(metrics):
                self._writer.add_scalar(tag, value, iteration)
            self._writer.flush()
        self.last_iteration = iteration
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
