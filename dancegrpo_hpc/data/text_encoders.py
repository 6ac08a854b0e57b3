"""The HunyuanVideo text encoders, run from local folders through transformers.

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

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..checks import InputError, require

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
CLIP_TYPES = ("clip_text_model", "clip")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUT = "a diffusers HunyuanVideo root (text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class TextEncoderPaths:
    llama: str
    llama_tokenizer: str
    clip: str
    clip_tokenizer: str
    llama_type: str = "llama"  # or "llava": a whole LLaVA model, whose language model is used


def _model_type(path: str, what: str, field: str, allowed: Sequence[str]) -> str:
    require(os.path.isdir(path), f"text encoders: {what} folder {path!r} does not exist; set {field} to {LAYOUT} "
                                 "or to a transformers save_pretrained folder")
    config = os.path.join(path, "config.json")
    require(os.path.isfile(config), f"text encoders: {what} folder {path!r} has no config.json; set {field} to a "
                                    "transformers save_pretrained folder")
    try:
        model_type = json.load(open(config)).get("model_type")
    except ValueError as exc:
        raise InputError(f"text encoders: {config} is not valid JSON ({exc}); re-save the {what} model") from None
    require(model_type in allowed, f"text encoders: {what} folder {path!r} holds a {model_type!r} model; {field} "
                                   f"needs one of {', '.join(allowed)}")
    weights = [p for p in os.listdir(path) if p.endswith((".safetensors", ".bin", ".safetensors.index.json"))]
    require(weights, f"text encoders: {what} folder {path!r} has config.json but no weights (*.safetensors / *.bin); "
                     "copy the weights there")
    return model_type


def _check_tokenizer(path: str, what: str, field: str) -> None:
    require(os.path.isdir(path), f"text encoders: {what} tokenizer folder {path!r} does not exist; set {field} to "
                                 f"{LAYOUT} or to a folder holding the model and its tokenizer")
    require(any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES),
            f"text encoders: {what} tokenizer folder {path!r} has none of {', '.join(TOKENIZER_FILES)}; save the "
            "tokenizer there (tokenizer.save_pretrained)")


def resolve_paths(root: Optional[str] = None, llama: Optional[str] = None, clip: Optional[str] = None,
                  field: str = "--text-encoders") -> TextEncoderPaths:
    """Folders of the two models and tokenizers; explicit llama / clip folders (model and
    tokenizer together) override the root's. Checks them all; loads nothing."""
    require(root is not None or (llama is not None and clip is not None),
            f"text encoders: set {field} to {LAYOUT}" + ("" if llama is None and clip is None else
                                                          ", or give both the --llama and the --clip folder"))
    if root is not None:
        require(os.path.isdir(root), f"text encoders: {field} {root!r} does not exist; point it at {LAYOUT}")
    llama_field = "--llama" if llama is not None else f"{field} (text_encoder/)"
    clip_field = "--clip" if clip is not None else f"{field} (text_encoder_2/)"
    llama_model = llama if llama is not None else os.path.join(root, "text_encoder")
    clip_model = clip if clip is not None else os.path.join(root, "text_encoder_2")
    paths = TextEncoderPaths(
        llama=llama_model, llama_tokenizer=llama if llama is not None else os.path.join(root, "tokenizer"),
        clip=clip_model, clip_tokenizer=clip if clip is not None else os.path.join(root, "tokenizer_2"),
        llama_type=_model_type(llama_model, "LLaVA-Llama3", llama_field, LLAMA_TYPES))
    _check_tokenizer(paths.llama_tokenizer, "LLaVA-Llama3", llama_field.replace("text_encoder/", "tokenizer/"))
    _model_type(clip_model, "CLIP-L", clip_field, CLIP_TYPES)
    _check_tokenizer(paths.clip_tokenizer, "CLIP-L", clip_field.replace("text_encoder_2/", "tokenizer_2/"))
    return paths


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Union[str, torch.device]) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere, unless given."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        require(dtype in DTYPES.values(), f"text encoders: dtype must be one of {', '.join(DTYPES)}; got {dtype}")
        return dtype
    require(dtype in DTYPES, f"text encoders: dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(model) -> str:
    """Architecture of the module that runs (not where or in which dtype it was loaded)."""
    config = json.loads(model.config.to_json_string(use_diff=True))
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    return _sha256([type(model).__name__, config])


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return _sha256([rules, tokenizer.padding_side, tokenizer.special_tokens_map])


def _check_pad(tokenizer, what: str) -> None:
    require(tokenizer.pad_token is not None, f"text encoders: the {what} tokenizer has no pad token; set pad_token in "
                                             "its tokenizer_config.json (prompts are padded to a fixed length)")


class HunyuanTextEncoders:
    """The LLaVA-Llama3 text model and CLIP-L with their tokenizers (eval mode, no grad)."""

    def __init__(self, llama, llama_tokenizer, clip, clip_tokenizer, template: Optional[Dict] = None,
                 max_length: int = MAX_LENGTH, hidden_states_skip: int = HIDDEN_STATES_SKIP,
                 paths: Optional[TextEncoderPaths] = None):
        self.llama, self.llama_tokenizer = llama.eval(), llama_tokenizer
        self.clip, self.clip_tokenizer = clip.eval(), clip_tokenizer
        self.template = dict(DEFAULT_PROMPT_TEMPLATE if template is None else template)
        require("{}" in self.template.get("template", ""),
                "text encoders: template['template'] must contain one '{}' where the prompt goes")
        self.max_length, self.hidden_states_skip, self.paths = max_length, hidden_states_skip, paths
        _check_pad(llama_tokenizer, "LLaVA-Llama3")
        _check_pad(clip_tokenizer, "CLIP-L")
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
        from ..extras import import_extra

        import_extra("transformers", "real", field)  # one line naming the extra when it is missing
        from transformers import AutoTokenizer, CLIPTextModel, LlamaModel  # heavy: only after the checks

        llama_tokenizer = AutoTokenizer.from_pretrained(paths.llama_tokenizer)
        clip_tokenizer = AutoTokenizer.from_pretrained(paths.clip_tokenizer)
        _check_pad(llama_tokenizer, "LLaVA-Llama3")  # before the minutes an 8B model takes to load
        _check_pad(clip_tokenizer, "CLIP-L")
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

    def describe(self) -> Dict:
        """What made the embeddings (recorded in the cache index)."""
        def one(model, tokenizer, path):
            return {"class": type(model).__name__, "path": None if path is None else os.path.abspath(path),
                    "config_sha256": config_hash(model), "tokenizer_sha256": tokenizer_hash(tokenizer)}

        p = self.paths
        return {"llama": one(self.llama, self.llama_tokenizer, p and p.llama),
                "clip": one(self.clip, self.clip_tokenizer, p and p.clip),
                "template": self.template, "crop_start": self.crop_start, "max_length": self.max_length,
                "hidden_states_skip": self.hidden_states_skip, "clip_max_length": CLIP_MAX_LENGTH,
                "embed_dim": self.embed_dim, "pooled_dim": self.pooled_dim}


__all__ = ["HunyuanTextEncoders", "TextEncoderPaths", "resolve_paths", "resolve_dtype", "DEFAULT_PROMPT_TEMPLATE",
           "MAX_LENGTH", "CLIP_MAX_LENGTH", "DTYPES"]
