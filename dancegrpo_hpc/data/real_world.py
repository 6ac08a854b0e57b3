"""The real-data world (data.source=prompts): prompts from a file, text conditioning
from a precomputed embedding cache or the model family's text encoders, reference-image
latents for image-to-video, decoding by the family's diffusers VAE, and our DiT loaded
from a diffusers-format checkpoint. Everything family-specific (text encoders and their
tensors, the VAE, its latent shape and normalisation, image-to-video frames) comes from
the family's data parts (`get_family(model.family).data(model_config)`, models/family.py).

Everything a run can get wrong is checked here before anything heavy loads: the
checkpoint against model.preset, the VAE against the DiT's channels and the video
size, the cache or the text encoders against the family, every prompt against the
cache, the reference images against the model.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch

from ..checks import InputError, require
from ..extras import dali_installed
from ..models.family import DataParts, family_of_class, get_family
from ..conditioning import Conditioning
from .prompts import load_prompts, split_prompts
from .world import World

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _read_json(path: str, field: str, what: str) -> Dict:
    file = os.path.join(path, "config.json")
    require(os.path.isfile(file), f"config: {field} {path!r} has no config.json; give {what}")
    with open(file) as f:
        return json.load(f)


def checkpoint_config(config):
    """model.path's model config, which must be model.family's (its `_class_name`) and
    model.preset's architecture (the preset sizes validate and the memory estimate; the
    checkpoint is what runs)."""
    m = config.model
    family = get_family(m.family)
    raw = _read_json(m.path, "model.path", f"a diffusers {family.diffusers_class} folder")
    found_class = raw.get("_class_name")
    if found_class is not None and found_class != family.diffusers_class:
        try:
            other = f" (family {family_of_class(found_class).name!r})"
        except InputError:
            other = ""
        raise InputError(f"config: model.path holds a {found_class}{other} but model.family {m.family!r} loads "
                         f"{family.diffusers_class}; set model.family to the checkpoint's family")
    found = family.config_from_diffusers(raw, variant=m.preset)
    expected = family.preset(m.preset).replace(variant=m.preset)
    for key, value in expected.to_diffusers().items():
        got = found.to_diffusers()[key]
        require(got == value, f"config: model.path checkpoint has {key}={got!r} but model.preset {m.preset!r} has "
                              f"{value!r}; pick the preset of this checkpoint")
    return found


class _TextSource:
    """The family's text tensors per prompt, by name, on CPU: from the cache (data.embeddings)
    or the family's text encoders run here (data.text_encoder)."""

    def __init__(self, config, parts: DataParts, device, dtype):
        d = config.data
        self.parts = parts
        if d.embeddings is not None:
            from .embedding_cache import EmbeddingCache

            self.cache, self.encoders = EmbeddingCache.open(d.embeddings, family=parts.family), None
            require(self.cache.names == parts.text_tensors,
                    f"config: data.embeddings holds the tensors {', '.join(self.cache.names)} but model family "
                    f"{parts.family!r} reads {', '.join(parts.text_tensors)}; recreate the cache with "
                    "tools/precompute_embeddings.py")
        else:
            self.cache = None
            self.encoders = parts.load_text_encoders(d.text_encoder, device=device, dtype=dtype,
                                                     field="data.text_encoder")

    def check(self, prompts: List[str], negative: bool) -> None:
        if self.cache is not None:
            known = set(self.cache.prompts)
            missing = [p for p in prompts if p not in known]
            if missing:
                raise InputError(f"config: data.embeddings holds no embedding for {len(missing)} prompt(s) of "
                                 f"data.prompts, the first: {missing[0][:60]!r}; rerun tools/precompute_embeddings.py "
                                 "on this prompt file")
        for tensors in [self.lookup(prompts[:1])] + ([self.negative()] if negative else []):
            self.parts.check_text({k: tuple(t.shape[1:]) for k, t in tensors.items()}, self.field)

    @property
    def field(self) -> str:
        return "data.embeddings" if self.cache is not None else "data.text_encoder"

    def lookup(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        out = self.cache.lookup(prompts) if self.cache is not None else self.encoders.encode(prompts)
        return {k: t.cpu() for k, t in zip(self.parts.text_tensors, out)}

    def negative(self) -> Dict[str, torch.Tensor]:
        """The negative prompt (the unconditional branch of real CFG), batch 1."""
        if self.cache is not None:
            return {k: t for k, t in zip(self.parts.text_tensors, self.cache.negative())}
        return self.lookup([self.parts.negative_prompt])


class PromptWorld(World):
    """data.source=prompts. encode() gives text conditioning and, for image-to-video
    models, the reference images' latents; decode() gives [B, F, 3, H, W] in [0, 1]."""

    def __init__(self, config, device="cpu"):
        from ..extras import require_extra

        d, m = config.data, config.model
        # the VAE is diffusers' and the text encoders transformers': say so before anything loads
        require_extra(["diffusers"] + (["transformers"] if d.embeddings is None else []), "real",
                      "config: data.source=prompts")
        self.config, self.device = config, torch.device(device)
        # VAE and text encoders in the model's dtype on GPUs; float32 on CPUs (bf16 3D convolutions run 10x slower)
        self.aux_dtype = _DTYPES[m.dtype] if self.device.type == "cuda" else torch.float32
        self.model_config = checkpoint_config(config)
        self.parts = get_family(m.family).data(self.model_config)
        self.image_model = self.parts.image_to_video
        require(d.reference_images is None or self.image_model,
                f"config: data.reference_images is set but model.preset {m.preset!r} of model family {m.family!r} "
                "takes no reference image (it is not an image-to-video model); remove data.reference_images")
        prompts = load_prompts(d.prompts, image_root=d.reference_images)
        require(d.eval_prompts < len(prompts),
                f"config: data.eval_prompts={d.eval_prompts} leaves no prompt to train on: data.prompts has "
                f"{len(prompts)} prompts (after deduplication); set data.eval_prompts <= {len(prompts) - 1}")
        split = split_prompts(prompts, eval_count=d.eval_prompts, seed=config.seed)
        self.train_prompts, self.eval_prompts = list(split.train.prompts), list(split.eval.prompts)
        self.images = self._image_paths(split) if self.image_model else {}
        vae_config = _read_json(d.vae, "data.vae", f"a diffusers {self.parts.vae_class} folder")
        self.latent_shape = self.parts.latent_shape(vae_config, d.frames, d.height, d.width)
        self.text = _TextSource(config, self.parts, self.device, self.aux_dtype)
        self.text.check(self.train_prompts + self.eval_prompts, config.sampling.cfg_scale > 1)
        # tiling splits only inputs above its tile size (and 16 frames): large videos, never small ones
        self.vae = self.parts.load_vae(d.vae, self.device, self.aux_dtype, tiling=d.vae_tiling,
                                       tile_size=d.vae_tile_size, tile_stride=d.vae_tile_stride)
        # auto: DALI decodes on the GPU where it is installed; a few images per iteration decode as fast with PIL
        # on a CPU
        self.image_backend = d.image_loader if d.image_loader != "auto" else \
            ("dali" if self.device.type == "cuda" and dali_installed() else "pil")

    # ---- checks ---------------------------------------------------------------------------------
    def _image_paths(self, split) -> Dict[str, str]:
        name = self.config.model.preset
        require(split.train.reference_images is not None,
                f"config: model.preset {name!r} is image-to-video; data.prompts must be a .csv / .jsonl file with an "
                "`image` column (paths relative to data.reference_images)")
        out: Dict[str, str] = {}
        for part in (split.train, split.eval):
            for prompt, image in zip(part.prompts, part.reference_images):
                require(out.setdefault(prompt, image) == image,
                        f"config: data.prompts lists prompt {prompt[:60]!r} with two reference images; the trainer "
                        "keys images by prompt, so make each prompt's text unique")
        return out

    # ---- the World interface ------------------------------------------------------------------
    @torch.no_grad()
    def image_latents(self, prompts: List[str], device) -> torch.Tensor:
        """[N, C, 1, h, w]: the reference images, resized / cropped to the video size, VAE-encoded."""
        from .reference_images import load_images

        d = self.config.data
        images = load_images([self.images[p] for p in prompts], d.height, d.width, self.image_backend, self.device)
        return self.parts.encode_images(self.vae, images).float().to(device)

    def _tensors(self, text: Dict[str, torch.Tensor], device, n: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Text tensors as the model reads them: float32 (masks long), on `device`; n: batch 1 expanded to n."""
        out = {}
        for k, t in text.items():
            t = t if k in self.parts.mask_tensors else t.float()
            out[k] = (t if n is None else t.expand(n, *t.shape[1:])).to(device)
        return out

    @torch.no_grad()
    def encode(self, prompts: List[str], device, negative: bool = False) -> Conditioning:
        image = {self.parts.image_tensor: self.image_latents(prompts, device)} if self.image_model else {}
        cond = Conditioning(**self._tensors(self.text.lookup(prompts), device), **image)
        if negative:
            cond.negative = Conditioning(**self._tensors(self.text.negative(), device, len(prompts)), **image)
        return cond

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        return self.parts.decode(self.vae, latents.to(self.device, self.aux_dtype), cond)

    def load_policy(self, **options):
        return get_family(self.config.model.family).from_diffusers(self.config.model.path, **options)


__all__ = ["PromptWorld", "checkpoint_config"]
