"""Input validation that fails early with one clear line: what field, what was
wrong, how to fix it. Raised before any heavy work starts."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch


class InputError(ValueError):
    """Bad user input (a tensor, an argument or a config field)."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def check_choice(where: str, name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    require(value in choices, f"{where}: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_positive(where: str, name: str, value: float) -> None:
    require(
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
        f"{where}: {name} must be a positive finite number; got {value!r}",
    )


def check_unit_interval(where: str, name: str, value: float) -> None:
    """value in (0, 1]."""
    require(
        isinstance(value, (int, float)) and 0 < value <= 1,
        f"{where}: {name} must lie in (0, 1]; got {value!r}",
    )


def check_tensor(where: str, name: str, value) -> torch.Tensor:
    require(isinstance(value, torch.Tensor), f"{where}: {name} must be a torch.Tensor; got {type(value).__name__}")
    require(value.is_floating_point(), f"{where}: {name} must be a floating-point tensor; got {value.dtype}")
    return value


def check_like(
    where: str, name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype: Optional[bool] = True
) -> None:
    """value has ref's shape and device (and dtype unless dtype=False)."""
    check_tensor(where, name, value)
    require(
        value.shape == ref.shape,
        f"{where}: {name} shape {tuple(value.shape)} must equal {ref_name} shape {tuple(ref.shape)}",
    )
    require(
        value.device == ref.device, f"{where}: {name} is on {value.device} but {ref_name} is on {ref.device}"
    )
    if dtype:
        require(
            value.dtype == ref.dtype,
            f"{where}: {name} dtype {value.dtype} must equal {ref_name} dtype {ref.dtype}",
        )


def checking_values() -> bool:
    """Value checks read tensor contents; skip them while torch.compile traces."""
    return not torch.compiler.is_compiling()
