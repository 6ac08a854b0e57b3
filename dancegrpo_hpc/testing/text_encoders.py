"""Tiny random-initialised HunyuanVideo text encoders of the real classes (LlamaModel or
LLaVA, CLIPTextModel) with offline word-level tokenizers, saved in the diffusers layout
(text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/), for tests and the tiny real-data
world (tiny_real.py). No hub access; transformers and tokenizers are imported when called."""

from __future__ import annotations

import os
import re

import torch

from ..data.text_encoders import DEFAULT_PROMPT_TEMPLATE

LLAMA_SPECIALS = ["<unk>", "<pad>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
WORDS = ("a the of and in on with red blue green yellow cat dog bird fish car tree house river mountain city "
         "moving left right up down slowly quickly running jumping flying under over near far small big "
         "sunset night day rain snow camera pans zooms close shot wide video").split()


PIECES = r"\w+|[^\w\s]+|\n"  # words, punctuation runs, and each newline (as Llama-3 keeps them)


def _words(text):
    return re.findall(PIECES, text)


def _tokenizer(specials, words, bos, eos, pad, model_max_length=None):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[ \t]+"), "removed"),
                                                 pre_tokenizers.Split(Regex(PIECES), "isolated")])
    tok.add_special_tokens(specials)
    if bos or eos:
        single = " ".join(x for x in (bos, "$A", eos) if x)
        ids = [(t, vocab[t]) for t in (bos, eos) if t]
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=ids)
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token=pad, bos_token=bos,
                                   eos_token=eos, padding_side="right", **extra), len(vocab)


def tiny_text_encoders(hidden=32, pooled=24, layers=4, llava=False, seed=0):
    """(llama_model, llama_tokenizer, clip_model, clip_tokenizer), random weights, float32."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    words = _words(DEFAULT_PROMPT_TEMPLATE["template"].replace("{}", "")) + WORDS
    # no BOS: then the template's prefix is 95 tokens, its real crop_start, so the crop keeps exactly the prompt
    llama_tok, llama_vocab = _tokenizer(LLAMA_SPECIALS, words, None, None, "<pad>")
    clip_tok, clip_vocab = _tokenizer(CLIP_SPECIALS, WORDS, "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", 77)
    torch.manual_seed(seed)
    llama_cfg = LlamaConfig(vocab_size=llama_vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512, pad_token_id=llama_tok.pad_token_id,
                            bos_token_id=llama_tok.bos_token_id)
    if llava:
        from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

        vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=28, patch_size=14)
        llama = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=llama_cfg,
                                                          image_token_index=llama_vocab - 1))
    else:
        llama = LlamaModel(llama_cfg)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=clip_vocab, hidden_size=pooled, intermediate_size=2 * pooled,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                                        pad_token_id=clip_tok.pad_token_id))
    return llama.eval(), llama_tok, clip.eval(), clip_tok


def save_tiny_text_encoders(root, **options):
    """Writes the diffusers layout under root; returns root."""
    llama, llama_tok, clip, clip_tok = tiny_text_encoders(**options)
    for sub, obj in (("text_encoder", llama), ("tokenizer", llama_tok), ("text_encoder_2", clip),
                     ("tokenizer_2", clip_tok)):
        obj.save_pretrained(os.path.join(root, sub))
    return str(root)
