"""HunyuanVideo's real-data parts (models/family.py `DataParts`): its text encoders run from
local folders through transformers, their cache schema (embeds [L, 4096], mask [L], pooled
[768]), and its video VAE with the image-to-video frame bookkeeping.

    enc = HunyuanTextEncoders.from_pretrained("/ckpt/HunyuanVideo", device="cuda", dtype="bfloat16")
    embeds, mask, pooled = enc.encode(["a cat walks on grass"])   # [N, 256, 4096], [N, 256] long, [N, 768]

Exactly diffusers' `HunyuanVideoPipeline.encode_prompt` (0.42): the LLaVA-Llama3 text model
reads the prompt inside DEFAULT_PROMPT_TEMPLATE; the hidden state of layer -(skip + 1) = -3
is kept and cropped, with the attention mask, to the max_length (256) prompt tokens after
the template's `crop_start` (95) prefix tokens. CLIP-L reads the bare prompt (77 tokens, no
attention mask, as diffusers does) and gives its pooled output. Nothing is re-implemented:
the models are transformers' own classes, so the numbers are theirs.

Folders: a diffusers HunyuanVideo root (text_encoder/, tokenizer/, text_encoder_2/,
tokenizer_2/), or one folder per encoder holding the model and its tokenizer. The Llama
folder may hold a LlamaModel / LlamaForCausalLM (diffusers, Tencent's preprocessed
text_encoder) or a whole LlavaForConditionalGeneration, whose language model is used.
Paths are checked, with one-line errors, before transformers is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...checks import require
from ...conditioning import Conditioning
from ..family import DataParts, EncoderFolder, TextEncoders
from ..text_encoders import CLIP_TYPES, DTYPES, check_pad, describe_encoder, resolve_dtype, resolve_folders
from .config import HunyuanVideoConfig

# diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video.DEFAULT_PROMPT_TEMPLATE (a test checks they agree)
DEFAULT_PROMPT_TEMPLATE = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 95,
}
MAX_LENGTH = 256  # prompt tokens kept after the template prefix
CLIP_MAX_LENGTH = 77
HIDDEN_STATES_SKIP = 2  # diffusers' num_hidden_layers_to_skip: hidden_states[-3]
LLAMA_TYPES = ("llama", "llava")
FOLDERS = (EncoderFolder("llama", "LLaVA-Llama3", "text_encoder", "tokenizer", LLAMA_TYPES),
           EncoderFolder("clip", "CLIP-L", "text_encoder_2", "tokenizer_2", CLIP_TYPES))
LAYOUT = "a diffusers HunyuanVideo root (text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/)"


@dataclass(frozen=True)
class TextEncoderPaths:
    llama: str
    llama_tokenizer: str
    clip: str
    clip_tokenizer: str
    llama_type: str = "llama"  # or "llava": a whole LLaVA model, whose language model is used


def resolve_paths(root: Optional[str] = None, llama: Optional[str] = None, clip: Optional[str] = None,
                  field: str = "--text-encoders") -> TextEncoderPaths:
    """Folders of the two models and tokenizers; explicit llama / clip folders (model and
    tokenizer together) override the root's. Checks them all; loads nothing."""
    given = {k: v for k, v in (("llama", llama), ("clip", clip)) if v is not None}
    found = resolve_folders(HunyuanVideoData(), root, given, field)
    return TextEncoderPaths(llama=found["llama"].model, llama_tokenizer=found["llama"].tokenizer,
                            clip=found["clip"].model, clip_tokenizer=found["clip"].tokenizer,
                            llama_type=found["llama"].model_type)


class HunyuanTextEncoders(TextEncoders):
    """The LLaVA-Llama3 text model and CLIP-L with their tokenizers (eval mode, no grad)."""

    family = "hunyuan_video"
    tensor_names = ("embeds", "mask", "pooled")
    mask_names = ("mask",)

    def __init__(self, llama, llama_tokenizer, clip, clip_tokenizer, template: Optional[Dict] = None,
                 max_length: int = MAX_LENGTH, hidden_states_skip: int = HIDDEN_STATES_SKIP,
                 paths: Optional[TextEncoderPaths] = None):
        self.llama, self.llama_tokenizer = llama.eval(), llama_tokenizer
        self.clip, self.clip_tokenizer = clip.eval(), clip_tokenizer
        self.template = dict(DEFAULT_PROMPT_TEMPLATE if template is None else template)
        require("{}" in self.template.get("template", ""),
                "text encoders: template['template'] must contain one '{}' where the prompt goes")
        self.max_length, self.hidden_states_skip, self.paths = max_length, hidden_states_skip, paths
        check_pad(llama_tokenizer, "LLaVA-Llama3")
        check_pad(clip_tokenizer, "CLIP-L")
        crop = self.template.get("crop_start")
        if crop is None:  # as diffusers: the template's tokens minus the '{}' and the closing <|eot_id|>
            crop = len(llama_tokenizer(self.template["template"])["input_ids"]) - 2
        self.crop_start = int(crop)

    @classmethod
    def from_pretrained(cls, root: Optional[str] = None, llama: Optional[str] = None, clip: Optional[str] = None,
                        device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype, None] = None,
                        field: str = "--text-encoders", **options) -> "HunyuanTextEncoders":
        paths = resolve_paths(root, llama, clip, field)
        dtype = resolve_dtype(dtype, device)
        from ...extras import import_extra

        import_extra("transformers", "real", field)  # one line naming the extra when it is missing
        from transformers import AutoTokenizer, CLIPTextModel, LlamaModel  # heavy: only after the checks

        llama_tokenizer = AutoTokenizer.from_pretrained(paths.llama_tokenizer)
        clip_tokenizer = AutoTokenizer.from_pretrained(paths.clip_tokenizer)
        check_pad(llama_tokenizer, "LLaVA-Llama3")  # before the minutes an 8B model takes to load
        check_pad(clip_tokenizer, "CLIP-L")
        if paths.llama_type == "llava":
            from transformers import LlavaForConditionalGeneration

            # HunyuanVideo uses only the language model of LLaVA-Llama3; the vision tower is dropped
            llama_model = LlavaForConditionalGeneration.from_pretrained(paths.llama, dtype=dtype).model.language_model
        else:
            llama_model = LlamaModel.from_pretrained(paths.llama, dtype=dtype)
        clip_model = CLIPTextModel.from_pretrained(paths.clip, dtype=dtype)
        return cls(llama_model.to(device), llama_tokenizer, clip_model.to(device), clip_tokenizer, paths=paths,
                   **options)

    @property
    def device(self) -> torch.device:
        return next(self.llama.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.llama.config.hidden_size

    @property
    def pooled_dim(self) -> int:
        return self.clip.config.hidden_size

    @torch.no_grad()
    def encode_llama(self, prompts: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        texts = [self.template["template"].format(p) for p in prompts]
        inputs = self.llama_tokenizer(texts, max_length=self.max_length + self.crop_start, padding="max_length",
                                      truncation=True, return_tensors="pt", return_attention_mask=True)
        ids, mask = inputs.input_ids.to(self.device), inputs.attention_mask.to(self.device)
        out = self.llama(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        embeds = out.hidden_states[-(self.hidden_states_skip + 1)]
        if self.crop_start > 0:
            embeds, mask = embeds[:, self.crop_start:], mask[:, self.crop_start:]
        return embeds, mask

    @torch.no_grad()
    def encode_clip(self, prompts: List[str]) -> torch.Tensor:
        ids = self.clip_tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                                  return_tensors="pt").input_ids
        return self.clip(ids.to(self.device), output_hidden_states=False).pooler_output

    def encode(self, prompts: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeds [N, max_length, D], mask [N, max_length] long, pooled [N, P]) on the
        encoders' device and in their dtype, as diffusers' encode_prompt returns them."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        require(all(isinstance(p, str) for p in prompts), "text encoders: prompts must be strings")
        embeds, mask = self.encode_llama(prompts)
        return embeds, mask, self.encode_clip(prompts)

    def count_truncated(self, prompts: Sequence[str]) -> Tuple[int, int]:
        """How many prompts are cut (as diffusers cuts them): longer than max_length Llama
        tokens after the template prefix, and longer than 77 CLIP tokens."""
        prompts = list(prompts)
        llama = self.llama_tokenizer([self.template["template"].format(p) for p in prompts], verbose=False).input_ids
        clip = self.clip_tokenizer(prompts, verbose=False).input_ids
        return (sum(len(ids) > self.max_length + self.crop_start for ids in llama),
                sum(len(ids) > CLIP_MAX_LENGTH for ids in clip))

    def truncation(self, prompts: Sequence[str]) -> List[Tuple[int, int, str]]:
        llama, clip = self.count_truncated(prompts)
        return [(llama, self.max_length, "Llama"), (clip, CLIP_MAX_LENGTH, "CLIP")]

    def describe(self) -> Dict:
        """What made the embeddings (recorded in the cache index)."""
        one = describe_encoder
        p = self.paths
        return {"llama": one(self.llama, self.llama_tokenizer, p and p.llama),
                "clip": one(self.clip, self.clip_tokenizer, p and p.clip),
                "template": self.template, "crop_start": self.crop_start, "max_length": self.max_length,
                "hidden_states_skip": self.hidden_states_skip, "clip_max_length": CLIP_MAX_LENGTH,
                "embed_dim": self.embed_dim, "pooled_dim": self.pooled_dim}


class HunyuanVideoData(DataParts):
    """HunyuanVideo T2V / I2V / T2I: LLaVA-Llama3 + CLIP-L text, AutoencoderKLHunyuanVideo
    (4x time, 8x space, latents x scaling_factor), image-to-video by channel concatenation
    or token replacement of the first frame."""

    family = "hunyuan_video"
    pipeline = "HunyuanVideo"
    text_tensors = HunyuanTextEncoders.tensor_names
    mask_tensors = HunyuanTextEncoders.mask_names
    text_encoder_folders = FOLDERS
    vae_class = "AutoencoderKLHunyuanVideo"

    def check_text_encoders(self, root, folders=None, field="data.text_encoder"):
        return resolve_folders(self, root, folders or {}, field)

    def load_text_encoders(self, root, folders=None, device="cpu", dtype=None, field="data.text_encoder"):
        folders = folders or {}  # checked, with one-line errors, before transformers is imported
        return HunyuanTextEncoders.from_pretrained(root, folders.get("llama"), folders.get("clip"), device=device,
                                                   dtype=dtype, field=field)

    def check_text(self, shapes, field):
        m: HunyuanVideoConfig = self.model
        width, pooled = shapes["embeds"][-1], shapes["pooled"][-1]
        require(width == m.text_embed_dim and pooled == m.pooled_projection_dim,
                f"config: {field} gives text width {width} and pooled width {pooled} but the DiT takes "
                f"{m.text_embed_dim} and {m.pooled_projection_dim}; use this model's text encoders")

    @property
    def image_to_video(self) -> bool:
        m = self.model
        return m.in_channels != m.out_channels or m.image_condition_type is not None

    @property
    def image_frames(self) -> int:
        """token_replace: the image latent is frame 0 of the video, the state only the frames after it."""
        return int(self.model.image_condition_type == "token_replace")

    def latent_shape(self, vae, frames, height, width):
        m: HunyuanVideoConfig = self.model
        found = vae.get("_class_name", self.vae_class)
        require(found == self.vae_class, f"config: data.vae holds a {found} but model family {self.family!r} decodes "
                                         f"with {self.vae_class}; set data.vae to this model's VAE folder "
                                         "(e.g. <HunyuanVideo>/vae)")
        t, s = vae.get("temporal_compression_ratio", 4), vae.get("spatial_compression_ratio", 8)
        channels = vae.get("latent_channels", 16)
        require(channels == m.out_channels,
                f"config: data.vae has {channels} latent channels but model.path's DiT predicts {m.out_channels}; "
                "use the VAE of this model")
        require((frames - 1) % t == 0, f"config: data.frames must be {t}k + 1 for data.vae; got {frames}")
        for name, size in (("height", height), ("width", width)):
            require(size % (s * m.patch_size) == 0,
                    f"config: data.{name}={size} must be a multiple of {s * m.patch_size} (VAE {s}x, patch "
                    f"{m.patch_size})")
        return (channels, (frames - 1) // t + 1 - self.image_frames, height // s, width // s)

    def load_vae(self, path, device="cpu", dtype=torch.float32, tiling=True, tile_size=None, tile_stride=None):
        from .vae import load_video_vae

        return load_video_vae(path, device, dtype, tiling=tiling, tile_size=tile_size, tile_stride=tile_stride)

    def encode_images(self, vae, images):
        from .vae import encode_reference_images

        return encode_reference_images(vae, images)

    def decode(self, vae, latents, cond: Optional[Conditioning] = None):
        """token_replace: the image latent is prepended as frame 0; HunyuanVideo-I2V
        (latent_concat) drops the decoded image frames, as diffusers' pipeline does."""
        from .vae import decode_latents

        if self.image_frames:
            require(cond is not None and cond.image_latents is not None,
                    "decode: token_replace latents need the conditioning's image latents (frame 0)")
            latents = torch.cat([cond.image_latents.to(latents), latents], dim=2)
        drop = vae.config.temporal_compression_ratio if self.model.image_condition_type == "latent_concat" else 0
        return decode_latents(vae, latents)[:, drop:]


def data_parts(model_config: Optional[HunyuanVideoConfig] = None) -> HunyuanVideoData:
    return HunyuanVideoData(model_config)


__all__ = ["HunyuanTextEncoders", "HunyuanVideoData", "TextEncoderPaths", "data_parts", "resolve_paths",
           "resolve_dtype", "DEFAULT_PROMPT_TEMPLATE", "MAX_LENGTH", "CLIP_MAX_LENGTH", "DTYPES", "LAYOUT"]
