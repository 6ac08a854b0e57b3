"""A resumed run's config against the one its checkpoint was saved with.

Three kinds of keys:
- free: bookkeeping, and memory / speed knobs that leave the math alone (at most
  float rounding moves with a micro-batch size); they may change, and the changes
  are listed in one line;
- layout (parallel.*): checked by check_same_layout, which no flag overrides (the
  per-rank optimizer and RNG files fix the layout);
- everything else (seed, group size, sampling steps, lr, rewards, model, data...):
  a change breaks the exact continuation of the run, so it is refused with one line
  unless the user allows it (`--allow-change KEY`, a key or a section such as `train`).
Keys one side lacks (a config written by another version) are not compared."""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import torch

from ..checks import InputError, require

FREE_KEYS = (
    "output_dir", "train.iterations", "checkpoint", "logging", "eval.every",
    "rollout.reward_workers", "rollout.reward_ranks", "rollout.buffer_device",
    "rollout.micro_batch", "train.micro_batch", "model.activation_checkpointing",
)
LAYOUT_KEYS = ("parallel",)
ALLOW_FLAG = "--allow-change"


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Dotted keys of nested mappings (lists, e.g. rewards, stay one value); tuples
    become lists so a saved (JSON) config compares equal to a live one."""
    out: Dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = json.loads(json.dumps(value))
    return out


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def normalise_allowed(allowed: Sequence[str], config: Dict[str, Any]) -> List[str]:
    """The allowed keys (repeated flags and comma lists), each naming a config key or
    section; a typo fails here rather than leaving the change refused."""
    keys = [part.strip() for item in (allowed or ()) for part in str(item).split(",") if part.strip()]
    known = flatten(config)
    for key in keys:
        require(any(_covered(k, [key]) for k in known),
                f"resume: {ALLOW_FLAG} {key} names no config key; give a dotted key such as train.lr or a section "
                "such as train")
        require(not _covered(key, LAYOUT_KEYS),
                f"resume: {ALLOW_FLAG} {key}: the parallel layout cannot change on resume (each rank's optimizer and "
                "RNG state belongs to it); resume with the saved layout or start fresh")
    return keys


def config_changes(saved: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """{dotted key: (saved value, current value)} for the keys both configs have."""
    old, new = flatten(saved), flatten(current)
    return {key: (old[key], new[key]) for key in sorted(set(old) & set(new))
            if old[key] != new[key] and not _covered(key, LAYOUT_KEYS)}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_config_changes(saved: Dict[str, Any], current: Dict[str, Any], allowed: Sequence[str] = ()) -> List[str]:
    """Raises InputError (one line) for changed keys that are neither free nor
    allowed; returns 'key old -> new' for the accepted changes."""
    allowed = normalise_allowed(allowed, current)
    changes = config_changes(saved, current)
    refused = [key for key in changes if not _covered(key, FREE_KEYS + tuple(allowed))]
    if refused:
        listed = ", ".join(f"{key} ({_short(changes[key][0])} -> {_short(changes[key][1])})" for key in refused)
        flags = " ".join(f"{ALLOW_FLAG} {key}" for key in refused)
        raise InputError(f"resume: the config differs from the checkpoint's in {listed}; that breaks the exact "
                         f"continuation of the run: pass {flags} to apply the change, or set the saved value again")
    return [f"{key} {_short(old)} -> {_short(new)}" for key, (old, new) in changes.items()]


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, scheduler, *, lr: float, betas, eps: float,
                             weight_decay: float, local: torch.optim.Optimizer = None) -> None:
    """After loading optimizer and scheduler state: the configured hyper-parameters
    instead of the restored ones (an allowed train.lr change takes effect), with the
    lr where the warmup schedule stands (base lr x factor at the restored step). Under
    ZeRO, `local` is the shard's inner optimizer; both sets of groups are set, since
    the wrapper's groups (left at the schedule's first step) overwrite the inner ones
    at every step."""
    require(isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR),
            f"resume: expected the LambdaLR warmup schedule; got {type(scheduler).__name__}")
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    scheduler.base_lrs = [lr for _ in factors]
    for groups in [optimizer.param_groups] + ([local.param_groups] if local not in (None, optimizer) else []):
        require(len(groups) == len(factors), f"resume: {len(groups)} optimizer parameter groups for "
                                             f"{len(factors)} schedule entries")
        for group, factor in zip(groups, factors):
            group.update(initial_lr=lr, lr=lr * factor, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
