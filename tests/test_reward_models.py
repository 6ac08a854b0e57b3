"""Real reward models on tiny random models of the same classes: preprocessing against
float64 hand-computed references, the open_clip -> transformers conversion of HPS
against an independent open_clip-style forward, CLIP score / PickScore / HPS /
VideoAlign end to end from checkpoints written here and loaded by the real loaders,
and one-line errors for missing or mismatched checkpoints. No hub downloads."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rewards import build_rewards, known_rewards
from dancegrpo_hpc.testing.videoalign import STATS, released_state_dict, write_qwen_base, write_reward_dir

from dancegrpo_hpc.rewards.preprocess import (CLIP_MEAN, CLIP_STD, ImagePreprocess, center_crop, frame_count,
                                              sample_frame_indices, shortest_side_size, smart_resize)


@pytest.fixture
def tf():
    return pytest.importorskip("transformers")


def videos(batch=2, frames=3, height=40, width=52, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, height, width, generator=g)


# ---------------------------------------------------------------------------------------------
# preprocessing


def test_frame_sampling_by_count_and_by_fps():
    assert sample_frame_indices(53, 4).tolist() == [0, 17, 35, 52]  # linspace 0..52: 0, 17.33, 34.67, 52
    assert sample_frame_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert sample_frame_indices(9, 1).tolist() == [4]  # one frame: the middle
    assert frame_count(53, fps=2.0, video_fps=24.0) == 4  # 53 frames at 24 fps = 2.2 s -> 4.4 -> 4
    assert frame_count(53, num_frames=100) == 53 and frame_count(1, num_frames=8) == 1
    assert frame_count(7) == 7
    with pytest.raises(InputError, match="video_fps"):
        frame_count(10, fps=2.0)
    with pytest.raises(InputError, match="not both"):
        frame_count(10, num_frames=2, fps=2.0, video_fps=24.0)


def _cubic(x, a=-0.5):  # Keys' cubic as PIL's BICUBIC filter uses it
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _resample_matrix(n_in, n_out):
    """PIL's antialiased resampling as a float64 matrix [n_out, n_in]: the kernel is
    stretched by the scale when shrinking, weights renormalised at the borders."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = [_cubic((j - centre + 0.5) / stretch) for j in range(lo, hi)]
        m[i, lo:hi] = torch.tensor(w, dtype=torch.float64) / sum(w)
    return m


def test_clip_preprocess_matches_a_float64_reference():
    image = videos(1, 1, 37, 50)[0]  # [1, 3, 37, 50]
    assert shortest_side_size(37, 50, 16) == (16, 21)  # long side truncated: 16 * 50 / 37 = 21.6
    assert shortest_side_size(50, 37, 16) == (21, 16)
    out = ImagePreprocess(resize_to=16, crop=16)(image)
    x = image.double()[0]
    resized = torch.einsum("hi,cij,wj->chw", _resample_matrix(37, 16), x, _resample_matrix(50, 21)).clamp(0, 1)
    left = int(round((21 - 16) / 2.0))  # torchvision's offset: round(2.5) = 2
    cropped = resized[:, :, left:left + 16]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(3, 1, 1)
    expected = (cropped - mean) / std
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[0].double(), expected, atol=2e-5, rtol=0)


def test_center_crop_and_smart_resize_by_hand():
    x = torch.arange(5 * 6.0).view(1, 1, 5, 6)
    assert center_crop(x, (3, 3))[0, 0].tolist() == [[8, 9, 10], [14, 15, 16], [20, 21, 22]]  # top 1, left round(1.5)=2
    with pytest.raises(InputError, match="larger than the image"):
        center_crop(x, (6, 6))
    # 480 x 480 at most 200704 pixels: 476 x 476 (17 x 28) is too many; 448 x 448 is exactly the cap
    assert smart_resize(480, 480, 28, 128 * 28 * 28, 200704) == (448, 448)
    assert smart_resize(480, 832, 28, 128 * 28 * 28, 200704) == (336, 588)
    assert smart_resize(56, 56, 28, 56 * 56, 200704) == (56, 56)
    assert smart_resize(20, 20, 28, 128 * 28 * 28, 200704) == (336, 336)  # too small: scaled up


# ---------------------------------------------------------------------------------------------
# CLIP family: a tiny CLIP tokenizer and config


def _bytes_to_unicode():
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, others above 255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(tf, directory):
    """A CLIP BPE tokenizer with no merges: every byte is a token (+ '</w>' at word ends).
    <|endoftext|> gets the highest id, as in CLIP (open_clip pools at argmax of the ids)."""
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = tf.CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_clip_config(tf, width=32, text_width=24, layers=2, image_size=28):
    return tf.CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=text_width, intermediate_size=2 * text_width,
                         num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=16,
                         hidden_act="gelu", bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=4, image_size=image_size, patch_size=14, hidden_act="gelu"),
        projection_dim=16)


def open_clip_state_dict(config, seed=0):
    """Random weights in open_clip's CLIP layout for `config`'s sizes."""
    g = torch.Generator().manual_seed(seed)
    t, v = config.text_config, config.vision_config
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s

    def blocks(prefix, width, inner, layers):
        sd = {}
        for i in range(layers):
            p = f"{prefix}.{i}."
            sd.update({p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width),
                       p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
                       p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
                       p + "ln_2.weight": 1 + r(width), p + "ln_2.bias": r(width),
                       p + "mlp.c_fc.weight": r(inner, width), p + "mlp.c_fc.bias": r(inner),
                       p + "mlp.c_proj.weight": r(width, inner), p + "mlp.c_proj.bias": r(width)})
        return sd

    grid = v.image_size // v.patch_size
    sd = {"visual.class_embedding": r(v.hidden_size), "visual.positional_embedding": r(grid * grid + 1, v.hidden_size),
          "visual.conv1.weight": r(v.hidden_size, 3, v.patch_size, v.patch_size),
          "visual.ln_pre.weight": 1 + r(v.hidden_size), "visual.ln_pre.bias": r(v.hidden_size),
          "visual.ln_post.weight": 1 + r(v.hidden_size), "visual.ln_post.bias": r(v.hidden_size),
          "visual.proj": r(v.hidden_size, config.projection_dim),
          "token_embedding.weight": r(t.vocab_size, t.hidden_size),
          "positional_embedding": r(t.max_position_embeddings, t.hidden_size),
          "ln_final.weight": 1 + r(t.hidden_size), "ln_final.bias": r(t.hidden_size),
          "text_projection": r(t.hidden_size, config.projection_dim), "logit_scale": torch.tensor(math.log(1 / 0.07))}
    sd.update(blocks("visual.transformer.resblocks", v.hidden_size, v.intermediate_size, v.num_hidden_layers))
    sd.update(blocks("transformer.resblocks", t.hidden_size, t.intermediate_size, t.num_hidden_layers))
    return sd


def _open_clip_blocks(x, sd, prefix, layers, heads, mask=None):
    """open_clip's residual attention blocks, written independently with nn.MultiheadAttention."""
    width = x.shape[-1]
    for i in range(layers):
        p = f"{prefix}.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": sd[p + "attn.in_proj_weight"], "in_proj_bias": sd[p + "attn.in_proj_bias"],
                              "out_proj.weight": sd[p + "attn.out_proj.weight"], "out_proj.bias": sd[p + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                     sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x = x + h
    return x


def open_clip_image_features(sd, config, pixels):
    v = config.vision_config
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=v.patch_size).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (v.hidden_size,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _open_clip_blocks(x, sd, "visual.transformer.resblocks", v.num_hidden_layers, v.num_attention_heads)
    x = F.layer_norm(x, (v.hidden_size,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return x[:, 0] @ sd["visual.proj"]


def open_clip_text_features(sd, config, ids):
    t = config.text_config
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    x = _open_clip_blocks(x, sd, "transformer.resblocks", t.num_hidden_layers, t.num_attention_heads, causal)
    x = F.layer_norm(x, (t.hidden_size,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def test_open_clip_conversion_matches_an_independent_open_clip_forward(tf):
    from dancegrpo_hpc.rewards.hps import clip_from_open_clip

    torch.manual_seed(0)
    config = tiny_clip_config(tf)
    sd = open_clip_state_dict(config)
    model = clip_from_open_clip("hps", config, {f"module.{k}": v for k, v in sd.items()}).eval()
    pixels = torch.randn(3, 3, 28, 28)
    ids = torch.tensor([[512, 40, 41, 42, 513, 0, 0], [512, 50, 513, 0, 0, 0, 0]])  # open_clip pads with 0
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        torch.testing.assert_close(image, open_clip_image_features(sd, config, pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text, open_clip_text_features(sd, config, ids), atol=1e-5, rtol=1e-5)
    assert model.config.vision_config.hidden_act == "gelu" and not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("visual.ln_post.weight"), "missing key 'visual.ln_post.weight'"),
    (lambda sd: sd.update({"visual.proj": torch.zeros(32, 8)}), "'visual.proj' gives shape \\(8, 32\\)"),
    (lambda sd: sd.update({"visual.attn_pool.query": torch.zeros(3)}), "does not use: visual.attn_pool.query"),
])
def test_open_clip_conversion_names_the_bad_key(tf, edit, message):
    from dancegrpo_hpc.rewards.hps import clip_from_open_clip

    config = tiny_clip_config(tf)
    sd = open_clip_state_dict(config)
    edit(sd)
    with pytest.raises(InputError, match=message):
        clip_from_open_clip("hps_v2.1", config, sd)


def write_hps(tf, tmp_path, seed=0):
    clip_dir = tmp_path / "clip-vit-h-14"
    config = tiny_clip_config(tf)
    config.save_pretrained(clip_dir)
    write_clip_tokenizer(tf, clip_dir)
    sd = open_clip_state_dict(config, seed)
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "HPS_v2.1_compressed.pt")
    return str(clip_dir), sd, config


def test_hps_end_to_end_from_files(tf, tmp_path):
    clip_dir, sd, config = write_hps(tf, tmp_path)
    assert {"hps_v2.1", "hpsv2", "clip_score", "pickscore", "videoalign", "videoalign_vq"} <= set(known_rewards())
    [(spec, reward)] = build_rewards([{"name": "hps_v2.1", "options": {
        "path": str(tmp_path), "clip_path": clip_dir, "device": "cpu", "num_frames": 2}}])
    v = videos(2, 3, 30, 40)
    prompts = ["a red ball", "a blue cube"]
    score = reward(v, prompts)
    assert score.shape == (2,) and score.dtype == torch.float32 and torch.isfinite(score).all()
    assert torch.equal(score, reward(v, prompts))  # deterministic
    assert not torch.allclose(score, reward(v.flip(-1), prompts))  # depends on the video
    # by hand: frames 0 and 2, resize shortest side to 28, crop 28, normalise, open_clip forward
    frames = v[:, [0, 2]].flatten(0, 1)
    pixels = ImagePreprocess(28, 28)(frames)
    ids = reward.tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"]
    image = F.normalize(open_clip_image_features(sd, config, pixels), dim=-1).view(2, 2, -1)
    text = F.normalize(open_clip_text_features(sd, config, ids), dim=-1)
    torch.testing.assert_close(score, (image * text[:, None]).sum(-1).mean(1), atol=1e-5, rtol=1e-5)
    [(_, alias)] = build_rewards([{"name": "hpsv2", "options": {"path": str(tmp_path / "HPS_v2.1_compressed.pt"),
                                                                 "clip_path": clip_dir, "device": "cpu",
                                                                 "num_frames": 2}}])
    assert alias.name == "hpsv2" and torch.allclose(alias(v, prompts), score)


def test_hps_errors_before_loading(tf, tmp_path):
    clip_dir, sd, config = write_hps(tf, tmp_path)
    with pytest.raises(InputError, match="options.path='.*nowhere.*' is not a file"):
        build_rewards([{"name": "hps_v2.1", "options": {"path": str(tmp_path / "nowhere.pt"), "clip_path": clip_dir}}])
    with pytest.raises(InputError, match="options.clip_path=.* is not a directory"):
        build_rewards([{"name": "hps_v2.1", "options": {"path": str(tmp_path), "clip_path": str(tmp_path / "x")}}])
    with pytest.raises(InputError, match="hps_v2.1: options: frame sampling: fps=2 needs the decoded video's rate"):
        build_rewards([{"name": "hps_v2.1", "options": {"path": str(tmp_path), "clip_path": clip_dir, "fps": 2}}])
    with pytest.raises(InputError, match="unknown option\\(s\\) size"):
        build_rewards([{"name": "hps_v2.1", "options": {"path": str(tmp_path), "clip_path": clip_dir, "size": 3}}])
    other = tiny_clip_config(tf, width=48)  # a config of another width than the checkpoint's
    other.save_pretrained(clip_dir)
    with pytest.raises(InputError, match="'visual.class_embedding' gives shape \\(32,\\) but the CLIP config expects \\(48,\\)"):
        build_rewards([{"name": "hps_v2.1", "options": {"path": str(tmp_path), "clip_path": clip_dir, "device": "cpu"}}])


def write_clip_model(tf, directory, seed=0, **sizes):
    torch.manual_seed(seed)
    model = tf.CLIPModel(tiny_clip_config(tf, **sizes)).eval()
    model.save_pretrained(directory)
    write_clip_tokenizer(tf, directory)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump({"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}, "do_center_crop": True,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}, f)
    return model


def test_clip_score_and_pickscore_share_one_implementation(tf, tmp_path):
    model = write_clip_model(tf, tmp_path / "clip")
    options = {"path": str(tmp_path / "clip"), "device": "cpu", "num_frames": 3}
    (_, clip), (_, pick) = build_rewards([{"name": "clip_score", "options": options},
                                          {"name": "pickscore", "options": options}])
    v = videos(2, 3, 28, 36)
    prompts = ["a cat", "two dogs running"]
    score = clip(v, prompts)
    # by hand, per frame, with the processor's own statistics
    pixels = ImagePreprocess(28, 28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(v.flatten(0, 1))
    tokens = clip.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
        text = F.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)
    expected = (image.view(2, 3, -1) * text[:, None]).sum(-1).mean(1)
    torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pick(v, prompts), model.logit_scale.exp().item() * expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(score, clip(v, prompts[::-1]))  # depends on the prompt
    # frames are averaged: the 3-frame score is the mean of the single-frame scores
    single = torch.stack([clip(v[:, i:i + 1], prompts) for i in range(3)]).mean(0)
    torch.testing.assert_close(score, single, atol=1e-5, rtol=1e-5)


def test_clip_processor_dir_may_differ_and_checkpoints_must_match(tf, tmp_path):
    write_clip_model(tf, tmp_path / "model")
    write_clip_tokenizer(tf, tmp_path / "processor")
    [(_, pick)] = build_rewards([{"name": "pickscore", "options": {
        "path": str(tmp_path / "model"), "processor_path": str(tmp_path / "processor"), "device": "cpu"}}])
    assert pick.preprocess == ImagePreprocess(28, 28)  # no preprocessor_config.json there: OpenAI CLIP defaults
    with pytest.raises(InputError, match="options.path=.* has no model.safetensors"):
        os.makedirs(tmp_path / "empty")
        tf.CLIPConfig().save_pretrained(tmp_path / "empty")
        build_rewards([{"name": "clip_score", "options": {"path": str(tmp_path / "empty")}}])
    # a checkpoint lacking a weight, or of another width than its config: refused, not re-initialised
    from safetensors.torch import load_file, save_file

    write_clip_model(tf, tmp_path / "partial")
    weights = load_file(str(tmp_path / "partial" / "model.safetensors"))
    del weights["visual_projection.weight"]
    save_file(weights, str(tmp_path / "partial" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match="does not match its config: missing keys visual_projection.weight"):
        build_rewards([{"name": "clip_score", "options": {"path": str(tmp_path / "partial"), "device": "cpu"}}])
    write_clip_model(tf, tmp_path / "wide", width=48)
    tiny_clip_config(tf).save_pretrained(tmp_path / "wide")
    with pytest.raises(InputError, match="clip_score: (cannot load CLIPModel|checkpoint .* does not match)"):
        build_rewards([{"name": "clip_score", "options": {"path": str(tmp_path / "wide"), "device": "cpu"}}])


# ---------------------------------------------------------------------------------------------
# VideoAlign: a tiny Qwen2-VL, its tokenizer, and VideoReward-layout checkpoints

@pytest.fixture
def videoalign_files(tf, tmp_path):
    base = write_qwen_base(tf, tmp_path / "qwen2-vl")
    state = released_state_dict(base, extra_rows=3)
    write_reward_dir(tmp_path / "VideoReward", state)
    options = {"path": str(tmp_path / "VideoReward"), "base_path": str(tmp_path / "qwen2-vl"), "device": "cpu",
               "video_fps": 8.0, "min_frame_pixels": 56 * 56}
    return base, state, options


def test_patchify_matches_qwen2vl_image_processor(tf):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from dancegrpo_hpc.rewards.videoalign import patchify

    image = torch.randn(3, 56, 84)
    ours, grid = patchify(image.expand(2, -1, -1, -1), patch=14, temporal_patch=2, merge=2)
    theirs, gh, gw = Qwen2VLImageProcessorPil.patchify(None, image.numpy(), 14, 2, 2)
    assert grid == (1, gh, gw) == (1, 4, 6)
    torch.testing.assert_close(ours, torch.from_numpy(theirs))
    # frames: an odd count is padded with the last frame; temporal patches are consecutive frame pairs
    frames = torch.randn(3, 3, 28, 28)
    flat, grid = patchify(frames, 14, 2, 2)
    assert grid == (2, 2, 2) and flat.shape == (8, 3 * 2 * 14 * 14)
    assert torch.equal(flat[4].view(3, 2, 14, 14)[:, 1], frames[2, :, :14, :14])  # pad copy of frame 2
    assert torch.equal(flat[3].view(3, 2, 14, 14)[:, 0], frames[0, :, 14:, 14:])  # merge block order: row-major


def test_videoalign_end_to_end_from_a_released_checkpoint(tf, videoalign_files):
    from dancegrpo_hpc.rewards.videoalign import videoalign_frame_count

    base, state, options = videoalign_files
    (_, vq), (_, mq), (_, both) = build_rewards([
        {"name": "videoalign_vq", "options": options}, {"name": "videoalign_mq", "options": options},
        {"name": "videoalign", "options": {**options, "heads": {"VQ": 1.0, "MQ": 2.0}}}])
    assert vq.scorer is mq.scorer  # one loaded model for every head of the run
    assert videoalign_frame_count(8, 8.0, 2.0) == 4 and videoalign_frame_count(53, 24.0, 2.0) == 4
    v = videos(2, 8, 56, 70)
    prompts = ["a dog runs on the beach", "a red car"]
    calls = []
    real_inputs = vq.scorer.inputs
    vq.scorer.inputs = lambda *a: calls.append(1) or real_inputs(*a)
    s_vq, s_mq = vq(v, prompts), mq(v, prompts)
    assert len(calls) == 1  # the MQ reward reused the VQ reward's forward on the same batch
    torch.testing.assert_close(both(v, prompts), s_vq + 2 * s_mq)
    assert s_vq.shape == (2,) and torch.isfinite(s_vq).all() and not torch.allclose(s_vq, s_mq)
    v2 = v.clone()
    assert torch.equal(vq(v2, prompts), s_vq)  # deterministic (a new tensor: computed again)
    assert len(calls) == 2
    assert not torch.allclose(vq(v.flip(1).contiguous(), prompts), s_vq)  # depends on the video

    # by hand: the base Qwen2-VL with the checkpoint's embeddings, hidden state at each reward token
    inputs = real_inputs(v, prompts)
    embed = state["base_model.model.model.embed_tokens.weight"]
    base.model.set_input_embeddings(torch.nn.Embedding.from_pretrained(embed))
    with torch.no_grad():
        hidden = base.model(**inputs, use_cache=False,
                            mm_token_type_ids=(inputs["input_ids"] == base.config.video_token_id).int() * 2
                            ).last_hidden_state
    rm = state["base_model.model.rm_head.weight"][0]
    ids = vq.scorer.model.head_token_ids
    assert ids == [embed.shape[0] - 3, embed.shape[0] - 2, embed.shape[0] - 1]  # appended after the vocabulary
    raw = torch.stack([hidden[inputs["input_ids"] == i] @ rm for i in ids], dim=1)
    torch.testing.assert_close(s_vq, (raw[:, 0] - STATS["VQ_mean"]) / STATS["VQ_std"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_mq, (raw[:, 1] - STATS["MQ_mean"]) / STATS["MQ_std"], atol=1e-4, rtol=1e-4)
    # 4 frames of 56 x 70 -> smart_resize 56 x 56 -> grid (2, 4, 4) -> 32 patches, 8 merged video tokens
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4], [2, 4, 4]]
    assert (inputs["input_ids"] == base.config.video_token_id).sum(1).tolist() == [8, 8]


def test_videoalign_lora_checkpoint_merges_like_the_full_one(tf, tmp_path, videoalign_files):
    base, state, options = videoalign_files
    g = torch.Generator().manual_seed(3)
    a_q, b_q = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g) * 0.1
    a_v, b_v = torch.randn(4, 32, generator=g), torch.randn(96, 4, generator=g) * 0.1
    q = "model.layers.0.self_attn.q_proj"
    qkv = "visual.blocks.0.attn.qkv"
    lora = {f"base_model.model.{q}.lora_A.weight": a_q, f"base_model.model.{q}.lora_B.weight": b_q,
            f"base_model.model.{qkv}.lora_A.weight": a_v, f"base_model.model.{qkv}.lora_B.weight": b_v}
    keep = ("base_model.model.model.embed_tokens.weight", "base_model.model.rm_head.weight")
    write_reward_dir(tmp_path / "lora", adapter=(lora, {k: state[k] for k in keep}, {"lora_alpha": 8, "r": 4}))
    merged = dict(state)
    merged[f"base_model.model.{q}.weight"] = state[f"base_model.model.{q}.weight"] + 2.0 * b_q @ a_q  # alpha / r = 2
    merged[f"base_model.model.{qkv}.weight"] = state[f"base_model.model.{qkv}.weight"] + 2.0 * b_v @ a_v
    write_reward_dir(tmp_path / "merged", merged)
    [(_, from_lora)] = build_rewards([{"name": "videoalign_ta", "options": {**options, "path": str(tmp_path / "lora")}}])
    [(_, from_full)] = build_rewards([{"name": "videoalign_ta", "options": {**options, "path": str(tmp_path / "merged")}}])
    [(_, unmerged)] = build_rewards([{"name": "videoalign_ta", "options": options}])
    v, prompts = videos(1, 4, 56, 56), ["waves"]
    torch.testing.assert_close(from_lora(v, prompts), from_full(v, prompts), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(from_lora(v, prompts), unmerged(v, prompts), atol=1e-4)


def test_videoalign_errors_are_one_line_and_early(tf, tmp_path, videoalign_files, monkeypatch):
    from dancegrpo_hpc.rewards import videoalign

    base, state, options = videoalign_files
    monkeypatch.setattr(videoalign, "load_videoalign_model", lambda *a: pytest.fail("loaded before checking"))

    def error(**changes):
        with pytest.raises(InputError) as info:
            build_rewards([{"name": "videoalign", "options": {**options, **changes}}])
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "options.path=" in error(path=str(tmp_path / "missing")) and "is not a directory" in error(path="/nope")
    os.makedirs(tmp_path / "empty")
    assert "holds no checkpoint-<step>" in error(path=str(tmp_path / "empty"))
    assert "options.step=3 not found" in error(step=3)
    assert "options.head must be one of VQ, MQ, TA" in error(head="XX")
    assert "options.heads must map" in error(heads={"VQ": "a lot"})
    assert "unknown option(s) heads" in str(pytest.raises(InputError, build_rewards, [
        {"name": "videoalign_vq", "options": {**options, "heads": {"VQ": 1}}}]).value)
    assert "must hold <|TA_reward|> exactly once" in error(prompt_template="{prompt} <|VQ_reward|> <|MQ_reward|>")
    assert "options.video_fps must be a number > 0" in error(video_fps=0)
    assert "options.normalize must be true or false" in error(normalize="yes")
    monkeypatch.undo()  # the checks below read the checkpoint itself
    bad = dict(state)
    bad["base_model.model.rm_head.weight"] = torch.zeros(2, 32)
    write_reward_dir(tmp_path / "bad_head", bad)
    assert "rm_head.weight has shape (2, 32)" in error(path=str(tmp_path / "bad_head"))
    other = write_qwen_base(tf, tmp_path / "wider", hidden=48)  # a base of another width
    del other
    message = error(base_path=str(tmp_path / "wider"))
    assert "rm_head.weight has shape (1, 32)" in message and "(1, 48)" in message
    no_head = {k: v for k, v in state.items() if "rm_head" not in k}
    write_reward_dir(tmp_path / "no_head", no_head)
    assert "has no rm_head.weight" in error(path=str(tmp_path / "no_head"))
    extra = dict(state, **{"base_model.model.model.layers.9.mlp.up_proj.weight": torch.zeros(64, 32)})
    write_reward_dir(tmp_path / "extra", extra)
    assert "['language_model.layers.9.mlp.up_proj.weight'] is not a Qwen2-VL parameter" in error(path=str(tmp_path / "extra"))


def test_missing_transformers_names_the_install_command(tmp_path, monkeypatch):
    import sys

    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    with pytest.raises(InputError, match=r"clip_score: needs the `transformers` package .*`rewards` extra: "
                                         r"pip install --no-build-isolation -e \"\.\[rewards\]\""):
        build_rewards([{"name": "clip_score", "options": {"path": str(tmp_path), "device": "cpu"}}])
