"""The run-level state rank 0 stores as trainer_state.json, and the check that a
resumed run has the layout the checkpoint was written with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List

from ..checks import InputError, require


@dataclass
class TrainerState:
    iteration: int
    world_size: int
    layout: Dict[str, Any]  # e.g. {"tp": 2, "ulysses": 1, "sequence_parallel": False}
    data_position: Dict[str, Any] = field(default_factory=dict)
    scheduler: Dict[str, Any] = field(default_factory=dict)
    metrics_history: List[Dict[str, Any]] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)  # run bookkeeping (e.g. the pre-training evaluation, wall time)

    def to_json(self) -> str:
        for item in fields(self):
            try:
                json.dumps(getattr(self, item.name))
            except (TypeError, ValueError) as error:
                raise InputError(f"trainer state: {item.name} must be JSON-serialisable ({error}); "
                                 "convert tensors and custom objects to numbers, strings, lists or dicts") from None
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        data = json.loads(text)
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def _normalised(layout: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(layout, sort_keys=True))  # tuples vs lists compare equal


def check_same_layout(saved: TrainerState, *, world_size: int, layout: Dict[str, Any], where: str) -> None:
    """Optimizer and RNG files are per rank, so a checkpoint only resumes on the
    world size and parallel layout it was written with."""
    require(saved.world_size == world_size,
            f"{where}: checkpoint was saved with world_size={saved.world_size} but this run has "
            f"world_size={world_size}; resume with {saved.world_size} ranks or start fresh (resume=none)")
    ours, theirs = _normalised(layout), _normalised(saved.layout)
    differing = sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))
    require(not differing,
            f"{where}: checkpoint parallel layout differs in {', '.join(differing)}: saved "
            + ", ".join(f"{k}={theirs.get(k)!r}" for k in differing) + "; this run "
            + ", ".join(f"{k}={ours.get(k)!r}" for k in differing)
            + "; resume with the saved layout or start fresh (resume=none)")
