"""Tiny VideoAlign (VideoReward) checkpoints of the real classes, for tests and the tiny
real-data world (tiny_real.py): a Qwen2-VL with a byte-level tokenizer, saved as
Qwen2-VL-2B-Instruct is, and reward directories in the layout VideoAlign releases. No hub
access; transformers is imported when called (the caller passes it in as `tf`)."""

from __future__ import annotations

import json
import os
import pathlib

import torch

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
STATS = {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -1.0, "MQ_std": 0.5, "TA_mean": 0.0, "TA_std": 4.0}


def write_qwen_tokenizer(tf, directory):
    """Byte-level BPE without merges (one token per byte) plus Qwen2-VL's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = tf.Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      additional_special_tokens=QWEN_SPECIALS[1:])
    tokenizer.save_pretrained(directory)
    return tokenizer


def write_qwen_base(tf, directory, hidden=32, seed=0):
    tokenizer = write_qwen_tokenizer(tf, directory)
    ids = dict(zip(QWEN_SPECIALS, tokenizer.convert_tokens_to_ids(QWEN_SPECIALS)))
    config = tf.Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=4, mlp_ratio=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = tf.Qwen2VLForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    return model


def released_state_dict(model, extra_rows, seed=1):
    """The reward model's weights as VideoAlign saves them: PEFT-wrapped names of the
    pre-v5 Qwen2-VL layout, embeddings grown by the reward tokens, and rm_head."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        out["base_model.model." + key] = value.clone()
    embed = "base_model.model.model.embed_tokens.weight"
    out[embed] = torch.cat([out[embed], torch.randn(extra_rows, out[embed].shape[1], generator=g) * 0.5])
    out["base_model.model.rm_head.weight"] = torch.randn(1, out[embed].shape[1], generator=g)
    return out


def write_reward_dir(directory, state=None, step=7, adapter=None):
    directory = pathlib.Path(directory)
    ckpt = directory / f"checkpoint-{step}"
    os.makedirs(ckpt)
    with open(directory / "model_config.json", "w") as f:
        json.dump({"data_config": {"fps": 2.0, "max_frame_pixels": 200704}, "inference_config": STATS,
                   "peft_lora_config": {"lora_enable": adapter is not None}}, f)
    if adapter is None:
        torch.save(state, ckpt / "model.pth")
    else:
        from safetensors.torch import save_file

        lora, non_lora, config = adapter
        save_file(lora, str(ckpt / "adapter_model.safetensors"))
        torch.save(non_lora, ckpt / "non_lora_state_dict.pth")
        with open(ckpt / "adapter_config.json", "w") as f:
            json.dump(config, f)


def write_videoalign(directory, seed=0):
    """A base model and a full VideoReward checkpoint under directory; returns the reward
    options {path, base_path} (add device / sizes as needed)."""
    import transformers as tf

    base = write_qwen_base(tf, os.path.join(directory, "qwen2-vl"), seed=seed)
    write_reward_dir(os.path.join(directory, "VideoReward"), released_state_dict(base, extra_rows=3, seed=seed + 1))
    return {"path": os.path.join(directory, "VideoReward"), "base_path": os.path.join(directory, "qwen2-vl")}
