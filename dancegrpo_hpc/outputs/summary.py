"""summary.json: the headline numbers of a finished run, and their one-line form."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

from ..checks import InputError, require
from ..checkpoint.atomic import write_text_atomic
from .metrics import strict_json

SUMMARY_FILE = "summary.json"
REQUIRED_KEYS = ("reward_before", "reward_after", "iterations", "wall_s")


def write_summary(output_dir, summary: Dict[str, Any]) -> Path:
    """Writes <output_dir>/summary.json atomically (a reader never sees half of it), as
    strict JSON: a reward computed from no valid sample is None (null), as is NaN."""
    try:
        text = json.dumps(strict_json(summary), indent=2, sort_keys=True, allow_nan=False) + "\n"
    except TypeError as error:
        raise InputError(f"summary: values must be numbers, strings, lists or dicts ({error})") from None
    path = Path(output_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


def read_summary(output_dir) -> Dict[str, Any]:
    path = Path(output_dir) / SUMMARY_FILE
    require(path.is_file(), f"summary: {path} does not exist; the run has not finished (or wrote elsewhere)")
    return json.loads(path.read_text(encoding="utf-8"))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_summary_line(summary: Dict[str, Any]) -> str:
    """e.g. 'reward 0.4120 -> 0.5380 (+30.6%) in 200 iterations, 1h02m05s'; a reward that is
    None (no held-out sample scored) reads 'none (no valid samples)'."""
    missing = [key for key in REQUIRED_KEYS if key not in summary]
    require(not missing, f"summary: missing {', '.join(missing)}; a summary needs {', '.join(REQUIRED_KEYS)}")
    before, after = (None if summary[k] is None else float(summary[k]) for k in ("reward_before", "reward_after"))
    if before is not None and after is not None and before != 0 and math.isfinite(before) and math.isfinite(after):
        change = f"{100 * (after - before) / abs(before):+.1f}%"
    else:
        change = "relative change n/a"
    return (f"reward {_reward(before)} -> {_reward(after)} ({change}) in {int(summary['iterations'])} iterations, "
            f"{_duration(float(summary['wall_s']))}")


def _reward(value) -> str:
    return "none (no valid samples)" if value is None else f"{value:.4f}"
