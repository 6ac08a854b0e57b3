"""Shared plumbing of the model-based rewards: the lazy transformers import, device
and dtype choice, and path checks that fail with one line before any weights load."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence

import torch

from ..checks import InputError, require

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def import_transformers(where: str):
    """transformers is an optional dependency (the toy world needs none): import it
    only when a model reward is built; missing, one line naming the `rewards` extra."""
    from ..extras import import_extra

    return import_extra("transformers", "rewards", where)


def pick_device(where: str, device: Optional[str]) -> torch.device:
    """The given device, else CUDA (the current device of this rank) when available."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"{where}: device must be like 'cpu', 'cuda' or 'cuda:1'; got {device!r}") from None
    require(dev.type != "cuda" or torch.cuda.is_available(),
            f"{where}: device={device!r} but CUDA is not available here; drop the option or use device: cpu")
    return dev


def pick_dtype(where: str, dtype: Optional[str], device: torch.device) -> torch.dtype:
    """The given dtype, else bfloat16 on CUDA (what the reward models were run in)
    and float32 on CPU (where bfloat16 matmuls are slow)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    require(isinstance(dtype, str) and dtype.lower() in _DTYPES,
            f"{where}: dtype must be one of {', '.join(sorted(_DTYPES))}; got {dtype!r}")
    return _DTYPES[dtype.lower()]


def require_dir(where: str, field: str, path: Any, needs: Sequence[Sequence[str]] = ()) -> str:
    """`path` is an existing directory holding, for each group in `needs`, at least one
    of the group's file names (e.g. [("config.json",), ("model.safetensors", "pytorch_model.bin")])."""
    require(isinstance(path, (str, os.PathLike)) and str(path) != "",
            f"{where}: options.{field} must be a local directory path; got {path!r}")
    path = os.fspath(path)
    require(os.path.isdir(path), f"{where}: options.{field}={path!r} is not a directory")
    for group in needs:
        require(any(os.path.exists(os.path.join(path, name)) for name in group),
                f"{where}: options.{field}={path!r} has no {' or '.join(group)}")
    return path


def require_file(where: str, field: str, path: Any) -> str:
    require(isinstance(path, (str, os.PathLike)) and str(path) != "",
            f"{where}: options.{field} must be a local file path; got {path!r}")
    path = os.fspath(path)
    require(os.path.isfile(path), f"{where}: options.{field}={path!r} is not a file")
    return path


def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


# What a Hugging Face model directory must hold: a config and weights in one of its formats.
HF_MODEL_FILES = (("config.json",),
                  ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json"))
# A tokenizer saved by tokenizers (tokenizer.json) or a BPE vocabulary pair.
TOKENIZER_FILES = (("tokenizer.json", "vocab.json"),)


def load_pretrained(where: str, cls, path: str, **kwargs):
    """cls.from_pretrained(path) that refuses a partial load: transformers only warns
    about missing or resized weights and fills them at random, which would make a
    reward silently meaningless."""
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"{where}: cannot load {cls.__name__} from {path!r}: {first_line(exc)}") from None
    for kind in ("missing_keys", "mismatched_keys"):
        bad = list(info.get(kind) or [])
        require(not bad, f"{where}: checkpoint {path!r} does not match its config: {kind.replace('_', ' ')} "
                         f"{', '.join(map(str, bad[:3]))}{' ...' if len(bad) > 3 else ''}")
    return model


def load_tokenizer(where: str, path: str):
    transformers = import_transformers(where)
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{where}: cannot load a tokenizer from {path!r}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_options(where: str, options: Dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    require(not unknown, f"{where}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
