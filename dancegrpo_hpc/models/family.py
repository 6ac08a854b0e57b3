"""The model-family seam (cf. torchtitan's TrainSpec): everything the engine needs from a
model family, behind one registry. The trainer, rollout, worker, worlds, memory estimate,
perf model and validate import only this module; a family is a folder under models/
that registers one `ModelFamily` here, and adding one touches none of them.

A family's sampler state is always a latent video [B, C, F, H, W] (an image is F = 1);
`velocity` turns that state, the flow time sigma in [0, 1] and the family's conditioning
into the model's velocity in the same layout, whatever the model's own units (timestep x
1000, packed 2x2 tokens, guidance embedding, image-to-video channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..checks import InputError, require
from ..conditioning import Conditioning


@dataclass(frozen=True)
class Cost:
    """What the memory estimate and the perf model need of one model config, per sample.
    Counts are for one TP rank where a `tp` argument is taken."""

    parameters: Callable[[int, str], int]  # (tp, adaln) -> parameters on one TP rank
    forward_flops: Callable[[int, int], Dict[str, float]]  # (image tokens, text tokens) -> linear/attention/total
    tp_bytes: Callable[[int, int, int, int, int], float]  # (tokens, text, tp, ulysses, element) -> bytes per forward
    ulysses_bytes: Callable[[int, int, int, int], float]  # (tokens, tp, ulysses, element) -> bytes per forward
    hidden_size: int  # the width of the residual stream (activation memory)
    blocks: int  # transformer blocks (activation memory, checkpointing)
    text_tokens: int  # text tokens per sample as the family's text encoders deliver them (padded)
    conditioning_elements: Callable[[int], int]  # (text tokens) -> conditioning elements stored per sample


class ModelFamily:
    """One model family. Subclasses set the class attributes and implement the methods;
    a method a family cannot serve raises InputError naming what it lacks."""

    name: str = ""  # the config's model.family
    diffusers_class: str = ""  # `_class_name` of its diffusers checkpoints (config.json)
    model_class: type = None  # our (sharded) module
    default_preset: str = ""
    image_to_video: bool = False  # whether any of its configs takes image conditioning

    # ---- configs ------------------------------------------------------------------------------
    def presets(self) -> Dict[str, object]:
        raise NotImplementedError

    def preset(self, name: str):
        presets = self.presets()
        require(name in presets, f"config: model.preset {name!r} is not a {self.name} preset; choose one of "
                                 f"{', '.join(sorted(presets))}")
        return presets[name]

    def config_from_diffusers(self, raw: Dict, variant: Optional[str] = None):
        raise NotImplementedError

    def is_image_model(self, model_config) -> bool:
        return False

    def check_model(self, model_config, tensor: int, ulysses: int, shape: Tuple[int, int, int, int],
                    where: str) -> None:
        """One-line InputError when the layout (TP x Ulysses) or the latent shape (C, F, H, W)
        does not fit the model; `where` names the config field in messages."""
        raise NotImplementedError

    def describe(self, model_config) -> str:
        """One line for `validate`: heads, width, blocks."""
        raise NotImplementedError

    # ---- the module ---------------------------------------------------------------------------
    def build(self, model_config, **options) -> torch.nn.Module:
        return self.model_class(model_config, **options)

    def from_diffusers(self, model_or_path, **options) -> torch.nn.Module:
        return self.model_class.from_diffusers(model_or_path, **options)

    def save_diffusers(self, model: torch.nn.Module, directory: str) -> None:
        raise NotImplementedError

    # ---- sampling -----------------------------------------------------------------------------
    def velocity(self, model, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 guidance: Optional[float]) -> torch.Tensor:
        """The model's velocity [B, C, F, H, W] (float32) at state x and flow time sigma [B]."""
        raise NotImplementedError

    def latent_tokens(self, model_config, latent_shape: Tuple[int, int, int, int]) -> int:
        """Image / video tokens of one sample of latent shape (C, F, H, W)."""
        raise NotImplementedError

    def sampling_shift(self, model_config, latent_shape: Tuple[int, int, int, int], shift: float,
                       mode: str) -> float:
        """The flow schedule's shift: `shift` when mode is "fixed"; "dynamic" is the family's
        resolution-dependent shift (diffusers' use_dynamic_shifting, shift = exp(mu)), which a
        family without one refuses."""
        if mode == "fixed":
            return shift
        raise InputError(f"config: sampling.shift_mode={mode!r}: model family {self.name!r} has no "
                         "resolution-dependent shift; use sampling.shift_mode=fixed with sampling.shift")

    def cost(self, model_config) -> Cost:
        raise NotImplementedError

    def conditioning_fields(self, model_config) -> List[str]:
        """The Conditioning tensors its velocity reads."""
        raise NotImplementedError


_FAMILIES: Dict[str, ModelFamily] = {}
_LOADERS = {  # families register on first use, so importing the registry stays light
    "hunyuan_video": "dancegrpo_hpc.models.hunyuan_video.family",
    "sd3": "dancegrpo_hpc.models.sd3.family",
    "flux": "dancegrpo_hpc.models.flux.family",
}


def register(family: ModelFamily) -> ModelFamily:
    require(family.name and family.name not in _FAMILIES, f"model family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def family_names() -> List[str]:
    return sorted(set(_LOADERS) | set(_FAMILIES))


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES and name in _LOADERS:
        import importlib

        importlib.import_module(_LOADERS[name])
    if name not in _FAMILIES:
        raise InputError(f"config: model.family {name!r} is unknown; choose one of {', '.join(family_names())}")
    return _FAMILIES[name]


def family_of(model_or_config) -> ModelFamily:
    """The family of a built model or of a model config (each carries its family's name as
    the class attribute `family`)."""
    name = getattr(model_or_config, "family", None)
    require(isinstance(name, str), f"model family: {type(model_or_config).__name__} names no family")
    return get_family(name)


def family_of_class(class_name: str) -> ModelFamily:
    """The family whose diffusers checkpoints carry `_class_name` class_name."""
    for name in family_names():
        family = get_family(name)
        if family.diffusers_class == class_name:
            return family
    known = ", ".join(f"{get_family(n).diffusers_class} ({n})" for n in family_names())
    raise InputError(f"model: no family loads diffusers class {class_name!r}; supported: {known}")
