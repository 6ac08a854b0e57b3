"""The model-family seam (cf. torchtitan's TrainSpec): everything the engine needs from a
model family, behind one registry. The trainer, rollout, worker, worlds, memory estimate,
perf model and validate import only this module; a family is a folder under models/
that registers one `ModelFamily` here, and adding one touches none of them.

A family's sampler state is always a latent video [B, C, F, H, W] (an image is F = 1);
`velocity` turns that state, the flow time sigma in [0, 1] and the family's conditioning
into the model's velocity in the same layout, whatever the model's own units (timestep x
1000, packed 2x2 tokens, guidance embedding, image-to-video channels).

A family's real-data parts (`ModelFamily.data(model_config)` -> `DataParts`: text encoders,
the embedding-cache schema, the VAE) are what data/real_world.py, data/embedding_cache.py
and tools/precompute_embeddings.py use; by convention they live in the family folder's
conditioning.py (`data_parts(model_config)`), imported only when a world asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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

    # ---- real data ----------------------------------------------------------------------------
    def data(self, model_config=None) -> "DataParts":
        """The family's real-data parts for a model config (None: the text side only, as the
        cache tool needs): `data_parts(model_config)` of the family folder's conditioning.py.
        A family without one is refused in one line."""
        import importlib

        module = type(self).__module__.rsplit(".", 1)[0] + ".conditioning"
        try:
            parts = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (exc.name and (module == exc.name or module.startswith(exc.name + "."))):
                raise  # the module is there but imports something missing
            raise InputError(f"config: model family {self.name!r} has no real-data parts yet (text encoders, VAE: "
                             f"{module.replace('.', '/')}.py); use data.source=toy") from None
        return parts.data_parts(model_config)


@dataclass(frozen=True)
class EncoderFolder:
    """One text encoder of a family, as a diffusers pipeline root holds it."""

    key: str  # its name in overrides (tools/precompute_embeddings.py --<key>): llama, clip, clip_g, t5
    what: str  # in messages: "CLIP-L", "T5-XXL"
    model: str  # the model's folder in a diffusers root: text_encoder, text_encoder_2, ...
    tokenizer: str  # its tokenizer's folder: tokenizer, tokenizer_2, ...
    types: Tuple[str, ...]  # the config.json model_type values it may hold


class TextEncoders:
    """A family's loaded text encoders (`DataParts.load_text_encoders`), eval mode, no grad."""

    family: str = ""
    tensor_names: Tuple[str, ...] = ()  # what encode() returns, in order (the family's Conditioning names)
    mask_names: Tuple[str, ...] = ()  # which of them are attention masks (long; cached as bool)

    def encode(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, ...]:
        """One tensor per name, prompts on dim 0, exactly as the family's diffusers pipeline
        encodes them (its encode_prompt), on the encoders' device and in their dtype."""
        raise NotImplementedError

    def describe(self) -> Dict:
        """What made the embeddings (classes, config and tokenizer hashes, lengths), for the cache index."""
        raise NotImplementedError

    def truncation(self, prompts: Sequence[str]) -> List[Tuple[int, int, str]]:
        """(prompts cut, token limit, tokenizer) per tokenizer, as diffusers cuts them."""
        return []


class DataParts:
    """What the real-data world, the embedding cache and tools/precompute_embeddings.py need
    of one family and model config: text encoding (from local encoder folders, or the
    cache of what they gave), and the VAE. `model` is the DiT config; None where only the
    text side is used. Checks raise one-line InputErrors naming the config field, before
    anything heavy loads."""

    family: str = ""  # the family's name, recorded in embedding caches
    pipeline: str = ""  # the diffusers pipeline whose folder layout these parts read (messages)
    text_tensors: Tuple[str, ...] = ()  # the Conditioning names of its text tensors, in encode() order
    mask_tensors: Tuple[str, ...] = ()  # which of them are attention masks
    negative_prompt: str = ""  # the unconditional prompt of real CFG (always in a cache)
    text_encoder_folders: Tuple[EncoderFolder, ...] = ()
    vae_class: str = ""  # the diffusers VAE class data.vae must hold (its config.json _class_name)
    image_tensor: str = "image_latents"  # the Conditioning name of reference-image latents (image-to-video)

    def __init__(self, model=None):
        self.model = model

    # ---- text ---------------------------------------------------------------------------------
    def check_text_encoders(self, root: Optional[str], folders: Optional[Dict[str, str]] = None,
                            field: str = "data.text_encoder"):
        """Checks the encoder folders (a diffusers root, and / or one folder per encoder key
        holding model and tokenizer); loads nothing. A root of another family is named
        (models/text_encoders.py `resolve_folders(self, root, folders, field)` does all this)."""
        raise NotImplementedError

    def load_text_encoders(self, root: Optional[str], folders: Optional[Dict[str, str]] = None, device="cpu",
                           dtype=None, field: str = "data.text_encoder") -> TextEncoders:
        raise NotImplementedError

    def check_text(self, shapes: Dict[str, Tuple[int, ...]], field: str) -> None:
        """The per-prompt shapes of the text tensors (cache or encoders, named by `field`) fit
        the model: widths, pooled sizes."""

    # ---- images and videos --------------------------------------------------------------------
    @property
    def image_to_video(self) -> bool:
        """Whether the model takes reference images (data.reference_images)."""
        return False

    def latent_shape(self, vae_config: Dict, frames: int, height: int, width: int) -> Tuple[int, int, int, int]:
        """(C, F, H, W) of one sample's latents for data.frames / height / width, after checking
        data.vae's config.json (class, latent channels against the model) and the sizes the
        VAE and the model's patch take."""
        raise NotImplementedError

    def load_vae(self, path: str, device="cpu", dtype: torch.dtype = torch.float32, tiling: bool = True,
                 tile_size: Optional[int] = None, tile_stride: Optional[int] = None):
        """The diffusers VAE in `path`, eval mode, gradients off; tiles above tile_size pixels."""
        raise NotImplementedError

    def encode_images(self, vae, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> float32 latents [N, C, 1, h, w] as the family's pipelines
        normalise them (the posterior's mode)."""
        raise NotImplementedError

    def decode(self, vae, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        """Sampled latents [B, C, F, h, w] -> videos [B, F', 3, H, W] in [0, 1], float32 on the
        CPU (cond: the samples' conditioning, for image-to-video layouts)."""
        raise NotImplementedError

    def describe_folders(self) -> str:
        """The diffusers root layout the text encoders come in (messages)."""
        subs = [d for f in self.text_encoder_folders for d in (f.model, f.tokenizer)]
        return f"a diffusers {self.pipeline} root ({', '.join(s + '/' for s in subs)})"


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
