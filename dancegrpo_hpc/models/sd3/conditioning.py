"""SD3 / SD3.5's real-data parts (models/family.py `DataParts`): CLIP-L, CLIP-G and T5-XXL text
encoders from a local diffusers SD3 root, their cache schema, and the AutoencoderKL VAE.

    enc = SD3TextEncoders.from_pretrained("/ckpt/stable-diffusion-3.5-medium", device="cuda")
    embeds, pooled = enc.encode(["a cat on grass"])   # [N, 77 + 256, 4096], [N, 768 + 1280]

Exactly diffusers' `StableDiffusion3Pipeline.encode_prompt` (0.42): each CLIP
(`CLIPTextModelWithProjection`) reads the prompt padded to CLIP-L's tokenizer length (77);
its penultimate hidden state (hidden_states[-2], clip_skip None) is kept, the two
concatenated on the channel dim and zero-padded to T5's width; T5 (`T5EncoderModel`) reads
the prompt padded and cut to max_sequence_length (256) tokens; the CLIP part and the T5
part are concatenated on the sequence dim. Pooled: the two projections (text_embeds)
concatenated. Real CFG's negative is the empty prompt "" (the cache always holds it).

VAE (models/image_vae.py): AutoencoderKL, (x - shift_factor) * scaling_factor (0.0609,
1.5305) from its config.json; an image is a one-frame video, latents [B, 16, 1, H/8, W/8].
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...checks import require
from ..family import EncoderFolder, TextEncoders
from ..image_vae import ImageVAEData
from ..text_encoders import (CLIP_TYPES, T5_TYPES, check_pad, clip_max_length, count_longer, describe_encoder,
                             device_of, load, resolve_dtype, resolve_folders, token_ids)

MAX_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length
FOLDERS = (EncoderFolder("clip", "CLIP-L", "text_encoder", "tokenizer", CLIP_TYPES),
           EncoderFolder("clip_g", "CLIP-G", "text_encoder_2", "tokenizer_2", CLIP_TYPES),
           EncoderFolder("t5", "T5-XXL", "text_encoder_3", "tokenizer_3", T5_TYPES))
CLASSES = {"clip": "CLIPTextModelWithProjection", "clip_g": "CLIPTextModelWithProjection", "t5": "T5EncoderModel"}


class SD3TextEncoders(TextEncoders):
    """CLIP-L, CLIP-G (`CLIPTextModelWithProjection`) and T5 (`T5EncoderModel`), eval mode."""

    family = "sd3"
    tensor_names = ("embeds", "pooled")
    mask_names = ()

    def __init__(self, clip_l, clip_l_tokenizer, clip_g, clip_g_tokenizer, t5, t5_tokenizer,
                 max_length: int = MAX_LENGTH, paths: Optional[Dict[str, str]] = None):
        require(isinstance(max_length, int) and max_length > 0,
                f"text encoders: max_length must be a positive integer; got {max_length!r}")
        self.clip_l, self.clip_l_tokenizer = clip_l.eval(), clip_l_tokenizer
        self.clip_g, self.clip_g_tokenizer = clip_g.eval(), clip_g_tokenizer
        self.t5, self.t5_tokenizer = t5.eval(), t5_tokenizer
        self.max_length, self.paths = max_length, paths or {}
        for tokenizer, what in ((clip_l_tokenizer, "CLIP-L"), (clip_g_tokenizer, "CLIP-G"), (t5_tokenizer, "T5")):
            check_pad(tokenizer, what)

    @classmethod
    def from_pretrained(cls, root: Optional[str] = None, folders: Optional[Dict[str, str]] = None,
                        device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype, None] = None,
                        field: str = "--text-encoders", **options) -> "SD3TextEncoders":
        found = resolve_folders(SD3Data(), root, folders or {}, field)  # one-line errors before any import
        dtype = resolve_dtype(dtype, device)
        loaded = load(found, CLASSES, dtype, device, field)
        return cls(*loaded["clip"], *loaded["clip_g"], *loaded["t5"], paths={k: f.model for k, f in found.items()},
                   **options)

    @property
    def clip_length(self) -> int:
        return clip_max_length(self.clip_l_tokenizer)  # diffusers' tokenizer_max_length, for both CLIPs

    @torch.no_grad()
    def encode_clip(self, model, tokenizer, prompts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        ids = token_ids(tokenizer, prompts, self.clip_length)
        out = model(ids.to(device_of(model)), output_hidden_states=True)
        return out.hidden_states[-2].to(self.clip_l.dtype), out[0]

    @torch.no_grad()
    def encode_t5(self, prompts: List[str]) -> torch.Tensor:
        ids = token_ids(self.t5_tokenizer, prompts, self.max_length)
        return self.t5(ids.to(device_of(self.t5)))[0].to(self.t5.dtype)

    def encode(self, prompts: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeds [N, 77 + max_length, D_t5], pooled [N, P_l + P_g]), as
        StableDiffusion3Pipeline.encode_prompt returns prompt_embeds and pooled_prompt_embeds."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        require(all(isinstance(p, str) for p in prompts), "text encoders: prompts must be strings")
        l_embeds, l_pooled = self.encode_clip(self.clip_l, self.clip_l_tokenizer, prompts)
        g_embeds, g_pooled = self.encode_clip(self.clip_g, self.clip_g_tokenizer, prompts)
        clip = torch.cat([l_embeds, g_embeds], dim=-1)
        t5 = self.encode_t5(prompts)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat([l_pooled, g_pooled], dim=-1)

    def truncation(self, prompts: Sequence[str]) -> List[Tuple[int, int, str]]:
        n = self.clip_length
        return [(count_longer(self.t5_tokenizer, prompts, self.max_length), self.max_length, "T5"),
                (max(count_longer(self.clip_l_tokenizer, prompts, n), count_longer(self.clip_g_tokenizer, prompts, n)),
                 n, "CLIP")]

    def describe(self) -> Dict:
        return {"clip": describe_encoder(self.clip_l, self.clip_l_tokenizer, self.paths.get("clip")),
                "clip_g": describe_encoder(self.clip_g, self.clip_g_tokenizer, self.paths.get("clip_g")),
                "t5": describe_encoder(self.t5, self.t5_tokenizer, self.paths.get("t5")),
                "max_length": self.max_length, "clip_max_length": self.clip_length,
                "embed_dim": self.t5.config.d_model,
                "pooled_dim": self.clip_l.config.projection_dim + self.clip_g.config.projection_dim}


class SD3Data(ImageVAEData):
    """SD3 / SD3.5 text-to-image: CLIP-L + CLIP-G + T5 text, AutoencoderKL with shift and scale."""

    family = "sd3"
    pipeline = "SD3"
    text_tensors = SD3TextEncoders.tensor_names
    mask_tensors = SD3TextEncoders.mask_names
    text_encoder_folders = FOLDERS

    def check_text_encoders(self, root, folders=None, field="data.text_encoder"):
        return resolve_folders(self, root, folders or {}, field)

    def load_text_encoders(self, root, folders=None, device="cpu", dtype=None, field="data.text_encoder"):
        return SD3TextEncoders.from_pretrained(root, folders, device=device, dtype=dtype, field=field)

    def check_text(self, shapes, field):
        m = self.model
        width, pooled = shapes["embeds"][-1], shapes["pooled"][-1]
        require(width == m.joint_attention_dim and pooled == m.pooled_projection_dim,
                f"config: {field} gives text width {width} and pooled width {pooled} but the SD3 model takes "
                f"{m.joint_attention_dim} and {m.pooled_projection_dim}; use this model's text encoders")

    def latent_channels(self) -> int:
        return self.model.in_channels

    def patch(self) -> int:
        return self.model.patch_size


def data_parts(model_config=None) -> SD3Data:
    return SD3Data(model_config)


__all__ = ["SD3Data", "SD3TextEncoders", "MAX_LENGTH", "data_parts"]
