"""FLUX.1's real-data parts (models/family.py `DataParts`): CLIP-L and T5-XXL text encoders
from a local diffusers FLUX root, their cache schema, and the AutoencoderKL image VAE.

    enc = FluxTextEncoders.from_pretrained("/ckpt/FLUX.1-dev", device="cuda", dtype="bfloat16")
    embeds, pooled = enc.encode(["a cat on grass"])   # [N, 512, 4096] (T5), [N, 768] (CLIP pooled)

Exactly diffusers' `FluxPipeline.encode_prompt` (0.42): CLIP-L (`CLIPTextModel`) reads the
prompt padded to its tokenizer's 77 tokens, no attention mask, and gives its pooler output;
T5 (`T5EncoderModel`) reads it padded and cut to max_sequence_length (512) tokens, no
attention mask, and gives its last hidden state. The pipeline's text_ids are zeros
[L, 3]: the velocity makes them (models/flux/packing.py), nothing stores them.

VAE (models/image_vae.py): diffusers' AutoencoderKL, (x - shift_factor) * scaling_factor
(0.1159, 0.3611 for FLUX.1) from its config.json; an image is a one-frame video, latents
[B, 16, 1, H/8, W/8] (packed 2x2 only inside the velocity).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...checks import require
from ..family import EncoderFolder, TextEncoders
from ..image_vae import ImageVAEData
from ..text_encoders import (CLIP_TYPES, T5_TYPES, check_pad, clip_max_length, count_longer, describe_encoder,
                             device_of, load, resolve_dtype, resolve_folders, token_ids)

MAX_LENGTH = 512  # FluxPipeline's max_sequence_length (FLUX.1-dev; schnell uses 256)
FOLDERS = (EncoderFolder("clip", "CLIP-L", "text_encoder", "tokenizer", CLIP_TYPES),
           EncoderFolder("t5", "T5-XXL", "text_encoder_2", "tokenizer_2", T5_TYPES))


class FluxTextEncoders(TextEncoders):
    """CLIP-L (`CLIPTextModel`) and T5 (`T5EncoderModel`) with their tokenizers, eval mode."""

    family = "flux"
    tensor_names = ("embeds", "pooled")
    mask_names = ()

    def __init__(self, clip, clip_tokenizer, t5, t5_tokenizer, max_length: int = MAX_LENGTH,
                 paths: Optional[Dict[str, str]] = None):
        require(isinstance(max_length, int) and max_length > 0,
                f"text encoders: max_length must be a positive integer; got {max_length!r}")
        self.clip, self.clip_tokenizer = clip.eval(), clip_tokenizer
        self.t5, self.t5_tokenizer = t5.eval(), t5_tokenizer
        self.max_length, self.paths = max_length, paths or {}
        check_pad(clip_tokenizer, "CLIP-L")
        check_pad(t5_tokenizer, "T5")

    @classmethod
    def from_pretrained(cls, root: Optional[str] = None, folders: Optional[Dict[str, str]] = None,
                        device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype, None] = None,
                        field: str = "--text-encoders", **options) -> "FluxTextEncoders":
        found = resolve_folders(FluxData(), root, folders or {}, field)  # one-line errors before any import
        dtype = resolve_dtype(dtype, device)
        loaded = load(found, {"clip": "CLIPTextModel", "t5": "T5EncoderModel"}, dtype, device, field)
        (clip, clip_tok), (t5, t5_tok) = loaded["clip"], loaded["t5"]
        return cls(clip, clip_tok, t5, t5_tok, paths={k: f.model for k, f in found.items()}, **options)

    @torch.no_grad()
    def encode_clip(self, prompts: List[str]) -> torch.Tensor:
        ids = token_ids(self.clip_tokenizer, prompts, clip_max_length(self.clip_tokenizer))
        return self.clip(ids.to(device_of(self.clip)), output_hidden_states=False).pooler_output.to(self.clip.dtype)

    @torch.no_grad()
    def encode_t5(self, prompts: List[str]) -> torch.Tensor:
        ids = token_ids(self.t5_tokenizer, prompts, self.max_length)
        return self.t5(ids.to(device_of(self.t5)), output_hidden_states=False)[0].to(self.t5.dtype)

    def encode(self, prompts: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeds [N, max_length, D_t5], pooled [N, D_clip]), as FluxPipeline.encode_prompt
        returns prompt_embeds and pooled_prompt_embeds."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        require(all(isinstance(p, str) for p in prompts), "text encoders: prompts must be strings")
        return self.encode_t5(prompts), self.encode_clip(prompts)

    def truncation(self, prompts: Sequence[str]) -> List[Tuple[int, int, str]]:
        clip = clip_max_length(self.clip_tokenizer)
        return [(count_longer(self.t5_tokenizer, prompts, self.max_length), self.max_length, "T5"),
                (count_longer(self.clip_tokenizer, prompts, clip), clip, "CLIP")]

    def describe(self) -> Dict:
        return {"clip": describe_encoder(self.clip, self.clip_tokenizer, self.paths.get("clip")),
                "t5": describe_encoder(self.t5, self.t5_tokenizer, self.paths.get("t5")),
                "max_length": self.max_length, "clip_max_length": clip_max_length(self.clip_tokenizer),
                "embed_dim": self.t5.config.d_model, "pooled_dim": self.clip.config.hidden_size}


class FluxData(ImageVAEData):
    """FLUX.1 text-to-image: T5 + CLIP-L pooled text, AutoencoderKL with shift and scale."""

    family = "flux"
    pipeline = "FLUX.1"
    text_tensors = FluxTextEncoders.tensor_names
    mask_tensors = FluxTextEncoders.mask_names
    text_encoder_folders = FOLDERS

    def check_text_encoders(self, root, folders=None, field="data.text_encoder"):
        return resolve_folders(self, root, folders or {}, field)

    def load_text_encoders(self, root, folders=None, device="cpu", dtype=None, field="data.text_encoder"):
        return FluxTextEncoders.from_pretrained(root, folders, device=device, dtype=dtype, field=field)

    def check_text(self, shapes, field):
        m = self.model
        width, pooled = shapes["embeds"][-1], shapes["pooled"][-1]
        require(width == m.joint_attention_dim and pooled == m.pooled_projection_dim,
                f"config: {field} gives T5 width {width} and pooled CLIP width {pooled} but the FLUX model takes "
                f"{m.joint_attention_dim} and {m.pooled_projection_dim}; use this model's text encoders")

    def latent_channels(self) -> int:
        return self.model.latent_channels

    def patch(self) -> int:
        return 2  # 2x2 latent patches are one token


def data_parts(model_config=None) -> FluxData:
    return FluxData(model_config)


__all__ = ["FluxData", "FluxTextEncoders", "MAX_LENGTH", "data_parts"]
