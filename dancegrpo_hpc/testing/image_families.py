"""Tiny random-initialised text encoders and VAEs of the real classes for the text-to-image
families, in diffusers' pipeline folder layout: FLUX.1 (CLIPTextModel + T5EncoderModel) and
SD3 (two CLIPTextModelWithProjection + T5EncoderModel), each with an AutoencoderKL carrying
the family's shift and scale. Sizes fit the families' tiny presets (flux-tiny, sd3-tiny:
text width 24, pooled 12, 4 latent channels). Offline word-level tokenizers (testing/
text_encoders.py); transformers and diffusers are imported when called."""

from __future__ import annotations

import os
from typing import Dict

import torch

from .text_encoders import CLIP_SPECIALS, WORDS, _tokenizer

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159)  # FLUX.1's vae/config.json
SD3_VAE = dict(scaling_factor=1.5305, shift_factor=0.0609)  # SD3.5's vae/config.json


def tiny_clip_tokenizer():
    return _tokenizer(CLIP_SPECIALS, WORDS, "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", 77)[0]


def tiny_t5_tokenizer():
    return _tokenizer(T5_SPECIALS, WORDS, None, "</s>", "<pad>", 512)[0]


def tiny_clip(tokenizer, hidden: int, projection: int = 0, seed: int = 0):
    """CLIPTextModel, or CLIPTextModelWithProjection when projection > 0."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)).eval()


def tiny_t5(tokenizer, d_model: int = 24, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                      feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return T5EncoderModel(config).eval()


def tiny_image_vae(latent_channels: int = 4, seed: int = 0, **config):
    """diffusers' AutoencoderKL of the FLUX / SD3 layout (4 blocks: 8x, no quant convs), narrow."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    options = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                   latent_channels=latent_channels, norm_num_groups=4, sample_size=32, use_quant_conv=False,
                   use_post_quant_conv=False)
    # gradients off, as loaded for a run (oneDNN picks other convolution kernels for weights without grad)
    return AutoencoderKL(**{**options, **config}).eval().requires_grad_(False)


def flux_parts(seed: int = 0) -> Dict[str, object]:
    """FluxPipeline's text_encoder, tokenizer, text_encoder_2, tokenizer_2 and vae."""
    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return dict(text_encoder=tiny_clip(clip_tok, 12, seed=seed), tokenizer=clip_tok,
                text_encoder_2=tiny_t5(t5_tok, 24, seed=seed + 1), tokenizer_2=t5_tok,
                vae=tiny_image_vae(4, seed=seed + 2, **FLUX_VAE))


def sd3_parts(seed: int = 0) -> Dict[str, object]:
    """StableDiffusion3Pipeline's three text encoders and tokenizers (CLIP-L 8 wide, projection
    4; CLIP-G 12, projection 8; T5 24) and vae."""
    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return dict(text_encoder=tiny_clip(clip_tok, 8, 4, seed=seed), tokenizer=clip_tok,
                text_encoder_2=tiny_clip(clip_tok, 12, 8, seed=seed + 1), tokenizer_2=tiny_clip_tokenizer(),
                text_encoder_3=tiny_t5(t5_tok, 24, seed=seed + 2), tokenizer_3=t5_tok,
                vae=tiny_image_vae(4, seed=seed + 3, **SD3_VAE))


def save_parts(root, parts: Dict[str, object]) -> str:
    """Each component in its diffusers pipeline sub-folder (text_encoder/, tokenizer/, ..., vae/)."""
    for name, component in parts.items():
        component.save_pretrained(os.path.join(str(root), name))
    return str(root)


__all__ = ["FLUX_VAE", "SD3_VAE", "flux_parts", "save_parts", "sd3_parts", "tiny_clip", "tiny_clip_tokenizer",
           "tiny_image_vae", "tiny_t5", "tiny_t5_tokenizer"]
