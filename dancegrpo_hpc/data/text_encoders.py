"""The HunyuanVideo text encoders (LLaVA-Llama3 + CLIP-L), exactly diffusers'
HunyuanVideoPipeline.encode_prompt. They are HunyuanVideo's real-data parts and live in
models/hunyuan_video/conditioning.py (worlds reach them through `ModelFamily.data`); this
module re-exports them for existing callers."""

from ..models.hunyuan_video.conditioning import (CLIP_MAX_LENGTH, DEFAULT_PROMPT_TEMPLATE, DTYPES, HIDDEN_STATES_SKIP,
                                                 LAYOUT, MAX_LENGTH, HunyuanTextEncoders, TextEncoderPaths,
                                                 resolve_dtype, resolve_paths)
from ..models.text_encoders import config_hash, tokenizer_hash

__all__ = ["HunyuanTextEncoders", "TextEncoderPaths", "resolve_paths", "resolve_dtype", "DEFAULT_PROMPT_TEMPLATE",
           "MAX_LENGTH", "CLIP_MAX_LENGTH", "DTYPES", "HIDDEN_STATES_SKIP", "LAYOUT", "config_hash",
           "tokenizer_hash"]
