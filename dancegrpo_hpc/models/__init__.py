"""Model families behind one registry (family.py); `from_diffusers` builds ours from diffusers'."""

from __future__ import annotations

import json
import os

from ..checks import require
from .family import family_of_class, family_names, get_family


def diffusers_class_name(model_or_folder) -> str:
    """The diffusers class of a module instance, or the `_class_name` of a checkpoint folder."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        path = os.path.join(os.fspath(model_or_folder), "config.json")
        require(os.path.isfile(path), f"from_diffusers: {os.fspath(model_or_folder)!r} has no config.json; give a "
                                      "diffusers model folder (e.g. <pipeline>/transformer) or a diffusers module")
        with open(path, encoding="utf-8") as f:
            name = json.load(f).get("_class_name")
        require(isinstance(name, str), f"from_diffusers: {path} names no _class_name; is it a diffusers model folder?")
        return name
    return type(model_or_folder).__name__


def from_diffusers(model_or_folder, **parallel_options):
    """Our (tensor / sequence parallel) module for a diffusers transformer instance or folder,
    of the family its class names; each rank reads only its slices. Its forward takes
    diffusers' forward keyword arguments and returns the same tensor. parallel_options go to
    the family's model (sequence_parallel, spec, attention, dtype, device, ...)."""
    return family_of_class(diffusers_class_name(model_or_folder)).from_diffusers(model_or_folder, **parallel_options)


__all__ = ["diffusers_class_name", "family_names", "from_diffusers", "get_family"]
