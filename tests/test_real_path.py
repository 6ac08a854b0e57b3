"""The real text-to-video / image-to-video path end to end on tiny random-initialised
components of the real classes: our DiT from diffusers-format folders, diffusers'
AutoencoderKLHunyuanVideo, an embedding cache written by the cache writer from tiny
HunyuanVideo text encoders, VideoAlign rewards on a tiny Qwen2-VL. One GRPO iteration
each from examples/tiny_{t2v,i2v}_real.yaml, which differ from the cluster examples
only in paths and sizes; the DiT input of each image-to-video variant against what
diffusers' pipelines feed their transformer; decoding against diffusers' VAE."""

import dataclasses
import math
import os

import pytest
import torch
import yaml

from dancegrpo_hpc.config import config_from_dict
from dancegrpo_hpc.models.hunyuan_video.config import preset
from dancegrpo_hpc.testing.tiny_real import I2V_PROMPTS, T2V_PROMPTS, repoint, write_tiny_dit, write_tiny_real

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
PAIRS = {"tiny_t2v_real.yaml": "hunyuan_t2v_64gpu.yaml", "tiny_i2v_real.yaml": "skyreels_i2v_32gpu.yaml"}
# what a tiny config may change: where things are, how big they are, and GPU-only settings (flash-attn;
# regional torch.compile, which costs minutes of compilation on a CPU)
PATH_KEYS = {"output_dir", "model.path", "data.prompts", "data.embeddings", "data.vae", "data.reference_images",
             "rewards.options.path", "rewards.options.base_path"}
SIZE_KEYS = {"model.preset", "data.frames", "data.height", "data.width", "data.eval_prompts", "sampling.steps",
             "rollout.prompts_per_iteration", "rollout.group_size", "rollout.micro_batch", "train.iterations",
             "train.best_of_n", "parallel.tensor", "parallel.ulysses", "parallel.sequence_parallel",
             "checkpoint.every", "parallel.world_size"}
HARDWARE_KEYS = {"model.attention", "model.compile"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Every tiny component, under the names the tiny configs use after runs/tiny_real/."""
    return write_tiny_real(tmp_path_factory.mktemp("tiny_real"))


def _example(name):
    with open(os.path.join(EXAMPLES, name)) as f:
        return yaml.safe_load(f)


def real_config(name, root, output_dir, **changes):
    """The example with its paths in `root`; changes: dotted key -> value."""
    data = repoint(_example(name), root)
    data["output_dir"] = str(output_dir)
    data["logging"] = {"tensorboard": False, "progress": False, "sample_grid": False}
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data)


def _flat(node, prefix=""):
    """Dotted keys; list items (rewards) by position, named without it in the key."""
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return {f"{k}#{i}": v for i, sub in enumerate(node) for k, v in _flat(sub, prefix).items()}
    return {prefix[:-1]: node}


# ---------------------------------------------------------------------------------------------
# the configs


@pytest.mark.parametrize("tiny, cluster", PAIRS.items())
def test_tiny_configs_differ_from_the_cluster_examples_only_in_paths_and_sizes(tiny, cluster):
    a = _flat(config_from_dict(_example(tiny), paths=False).to_dict())
    b = _flat(config_from_dict(_example(cluster), paths=False).to_dict())
    assert set(a) == set(b), f"{tiny} and {cluster} configure different rewards: {set(a) ^ set(b)}"
    differing = {k.split("#")[0] for k in a if a[k] != b[k]}
    assert differing <= PATH_KEYS | SIZE_KEYS | HARDWARE_KEYS, differing - PATH_KEYS - SIZE_KEYS - HARDWARE_KEYS
    assert "model.preset" in differing and "data.frames" in differing  # they really are tiny


@pytest.mark.parametrize("name", PAIRS)
def test_validate_the_tiny_configs(name, root, capsys, tmp_path, monkeypatch):
    from dancegrpo_hpc.validate import main

    data = repoint(_example(name), root)
    overrides = [f"{s}.{k}={v}" for s in ("model", "data") for k, v in data[s].items()
                 if isinstance(v, str) and v.startswith(root)]
    overrides.append(f"rewards={yaml.safe_dump(data['rewards'], default_flow_style=True).strip()}")  # reward paths too
    assert main([os.path.join(EXAMPLES, name), *overrides]) == 0
    assert main([os.path.join(EXAMPLES, name), "--no-check-paths"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "refuses" not in out
    monkeypatch.chdir(tmp_path)  # not the checkout, where tools/make_tiny_real.py may have written runs/tiny_real
    assert main([os.path.join(EXAMPLES, name)]) == 2  # runs/tiny_real/... does not exist here
    assert "model.path" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# one GRPO iteration


def _vae_decode(root, latents):
    """diffusers' own decode of scaled latents, as its pipelines post-process it."""
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(os.path.join(root, "vae"), torch_dtype=latents.dtype).eval()
    with torch.no_grad():
        video = vae.decode(latents / vae.config.scaling_factor).sample
    return ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)


def _one_iteration(config, whole_run=False):
    """Runs iteration 0 through the Trainer (whole_run: `train()`, with the held-out
    evaluations and the checkpoint); records the rollout the update trains on and its
    log-probs recomputed before the update at every trainable step: in micro-batches of
    the rollout's size, and for one sample alone (the training micro-batch, 1)."""
    from dancegrpo_hpc.rl.trainer import Trainer

    trainer = Trainer(config)
    seen = {}
    worker = trainer.worker
    update = worker.update_policy

    def recording_update(batch, advantages, *args, **kwargs):
        steps = torch.nonzero(batch.stochastic[:-1]).flatten()
        settings = worker.update
        worker.update = dataclasses.replace(settings, micro_batch=config.rollout.micro_batch)
        new = worker.compute_log_probs(batch, steps.repeat(len(batch), 1))
        worker.update = dataclasses.replace(settings, micro_batch=1)
        alone = worker.compute_log_probs(batch.select(torch.tensor([1])), steps[None])
        worker.update = settings
        seen.update(batch=batch, old=batch.log_probs[:, steps].cpu(), new=new, alone=alone)
        return update(batch, advantages, *args, **kwargs)

    worker.update_policy = recording_update
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    try:
        if whole_run:
            summary = trainer.train()
            assert math.isfinite(summary["reward_before"]) and math.isfinite(summary["reward_after"])
            assert os.path.exists(os.path.join(config.output_dir, "checkpoints", "iter_0000001"))
            metrics = trainer.history[0]
        else:
            metrics = trainer.run_iteration(0)
    finally:
        trainer.close()
    changed = sum(int(not torch.equal(before[n], p.detach())) for n, p in trainer.model.named_parameters())
    return trainer, metrics, seen, changed


def _check_iteration(trainer, metrics, seen, changed, rewards):
    assert math.isfinite(metrics["loss"]) and metrics["trained_samples"] == len(seen["batch"])
    for name in rewards:
        assert math.isfinite(metrics[f"reward_{name}"])
    assert metrics["optimizer_steps"] == trainer.config.train.updates_per_rollout and changed > 0
    log_ratio = (seen["new"] - seen["old"]).abs().max()
    assert log_ratio < 1e-5, f"on-policy |log ratio| = {log_ratio:.2e}"
    # bfloat16 matmuls round differently at another batch size: one sample alone moves the
    # velocity by an ulp or two, and the log-ratio by ~1e-4 (float32: < 1e-6)
    alone = (seen["alone"] - seen["old"][1:2]).abs().max()
    assert alone < (1e-3 if trainer.config.model.dtype == "bfloat16" else 1e-5), f"|log ratio| alone = {alone:.2e}"


def test_t2v_iteration_from_the_tiny_config(root, tmp_path):
    config = real_config("tiny_t2v_real.yaml", root, tmp_path)
    trainer, metrics, seen, changed = _one_iteration(config, whole_run=True)
    _check_iteration(trainer, metrics, seen, changed, ("videoalign_vq", "videoalign_mq"))
    world, batch = trainer.world, seen["batch"]
    assert world.latent_shape == (4, 3, 4, 4) and batch.latents.shape[1:] == (5, 4, 3, 4, 4)
    assert world.train_prompts + world.eval_prompts != [] and set(world.train_prompts) | set(world.eval_prompts) \
        == set(T2V_PROMPTS) and len(world.eval_prompts) == 1
    final = batch.latents[:2, -1]
    video = world.decode(final)
    assert video.shape == (2, 9, 3, 32, 32)
    torch.testing.assert_close(video, _vae_decode(root, final), rtol=0, atol=1e-5)


def test_i2v_iteration_from_the_tiny_config(root, tmp_path):
    from diffusers import AutoencoderKLHunyuanVideo

    from dancegrpo_hpc.data.reference_images import load_images

    config = real_config("tiny_i2v_real.yaml", root, tmp_path)
    trainer, metrics, seen, changed = _one_iteration(config)
    _check_iteration(trainer, metrics, seen, changed, ("videoalign_mq",))
    world, batch = trainer.world, seen["batch"]
    assert world.latent_shape == (4, 3, 4, 6)
    # the image latents each sample was conditioned on: its prompt's reference image, encoded by
    # diffusers' VAE (the posterior's mode, as HunyuanVideoImageToVideoPipeline), the same for uncond
    images = [world.images[p] for p in batch.prompts]
    assert images[0].endswith(f"ref{I2V_PROMPTS.index(batch.prompts[0])}.png")
    vae = AutoencoderKLHunyuanVideo.from_pretrained(os.path.join(root, "vae")).eval()
    pixels = load_images(images, 32, 48, "pil", "cpu") * 2 - 1
    with torch.no_grad():
        expected = vae.encode(pixels.unsqueeze(2)).latent_dist.mode().float() * vae.config.scaling_factor
    torch.testing.assert_close(batch.cond.image_latents, expected, rtol=0, atol=1e-6)
    assert torch.equal(batch.cond.negative.image_latents, batch.cond.image_latents)
    video = world.decode(batch.latents[:2, -1], batch.cond.select(torch.arange(2)))
    assert video.shape == (2, 9, 3, 32, 48)
    torch.testing.assert_close(video, _vae_decode(root, batch.latents[:2, -1]), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# image-to-video: the DiT input of each variant against diffusers' pipelines


class _Stop(Exception):
    pass


def _pipeline_input(name, pipeline, vae_dir, image, latents, frames):
    """hidden_states diffusers' pipeline feeds its transformer at the first step."""
    import diffusers
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler
    from hv_utils import diffusers_model

    transformer = diffusers_model(name)
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = kwargs["hidden_states"].clone()
        raise _Stop

    transformer.register_forward_pre_hook(hook, with_kwargs=True)
    parts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
                 vae=AutoencoderKLHunyuanVideo.from_pretrained(vae_dir), scheduler=FlowMatchEulerDiscreteScheduler())
    if pipeline == "HunyuanVideoImageToVideoPipeline":
        parts["image_processor"] = None
    pipe = getattr(diffusers, pipeline)(**parts)
    cfg = preset(name)
    g = torch.Generator().manual_seed(0)
    text = dict(prompt_embeds=torch.randn(1, 5, cfg.text_embed_dim, generator=g),
                prompt_attention_mask=torch.ones(1, 5, dtype=torch.long),
                pooled_prompt_embeds=torch.randn(1, cfg.pooled_projection_dim, generator=g))
    with torch.no_grad(), pytest.raises(_Stop):
        pipe(image=image, height=image.height, width=image.width, num_frames=frames, num_inference_steps=2,
             latents=latents.clone(), output_type="latent", generator=torch.Generator().manual_seed(1), **text)
    return seen["x"]


@pytest.mark.parametrize("name, pipeline", [("tiny-i2v-32ch", "HunyuanSkyreelsImageToVideoPipeline"),
                                            ("tiny-i2v-concat", "HunyuanVideoImageToVideoPipeline"),
                                            ("tiny-i2v-token-replace", "HunyuanVideoImageToVideoPipeline")])
def test_i2v_dit_input_is_what_diffusers_pipelines_feed_their_transformer(name, pipeline, root):
    from PIL import Image

    from dancegrpo_hpc.data.reference_images import load_images, load_video_vae, encode_reference_images
    from dancegrpo_hpc.models.hunyuan_video.family import dit_input

    cfg, c = preset(name), preset(name).out_channels
    path = os.path.join(root, "i2v_reference_images", "ref0.png")
    image = Image.open(path).crop((0, 0, 48, 32))  # already the video size: neither side resizes it
    image.save(os.path.join(root, "exact.png"))
    latents = torch.randn(1, c, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    got = _pipeline_input(name, pipeline, os.path.join(root, "vae"), image, latents, frames=9)
    token_replace = cfg.image_condition_type == "token_replace"
    image_part = got[:, :, :1] if token_replace else got[:, c:2 * c, :1]
    state = got[:, :, 1:] if token_replace else got[:, :c]
    # the sampled state: SkyReels starts from the noise itself, HunyuanVideo-I2V from 0.999 noise
    # + 0.001 image latent (its prepare_latents); GRPO starts every variant from pure noise
    mixed = latents if pipeline.startswith("HunyuanSkyreels") else latents * 0.999 + image_part * 0.001
    torch.testing.assert_close(state, mixed[:, :, 1:] if token_replace else mixed, rtol=0, atol=1e-6)
    # the layout around it: image frame, zero padding, mask, channel / frame order
    assert torch.equal(dit_input(cfg, state, image_part), got)
    assert got.shape[1] == cfg.in_channels
    if pipeline == "HunyuanVideoImageToVideoPipeline":  # the posterior's mode, as encode_reference_images
        ours = encode_reference_images(load_video_vae(os.path.join(root, "vae")),
                                       load_images([os.path.join(root, "exact.png")], 32, 48, "pil", "cpu"))
        torch.testing.assert_close(image_part, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, shape, frames", [("tiny-i2v-token-replace", (4, 2, 4, 6), 9),
                                                 ("tiny-i2v-concat", (4, 3, 4, 6), 5)])
def test_other_i2v_variants_sample_on_policy_and_decode_like_diffusers(name, shape, frames, root, tmp_path):
    """token_replace samples the frames after the image's (the image latent is prepended to
    decode); latent_concat decodes every frame and drops the image's 4, as diffusers does."""
    from dancegrpo_hpc.data.real_world import PromptWorld
    from dancegrpo_hpc.rl.policy import VelocityOptions, velocity
    from dancegrpo_hpc.rl.rollout import RolloutSettings, generate_rollouts
    from dancegrpo_hpc.sampling.sde import sde_step

    path = write_tiny_dit(tmp_path / "transformer", preset(name))
    config = real_config("tiny_i2v_real.yaml", root, tmp_path, **{"model.preset": name, "model.path": path,
                                                                   "model.dtype": "float32"})
    world = PromptWorld(config)
    assert world.latent_shape == shape
    model = world.load_policy(checkpoint_fraction=0.0)
    prompts = world.train_prompts[:2]
    cond = world.encode(prompts, "cpu")
    opts = VelocityOptions(guidance=1.0 if preset(name).guidance_embeds else None)
    settings = RolloutSettings(3, 7.0, "dance", 0.3, 2, 0, "device", 0)
    batch = generate_rollouts(model, cond, prompts, torch.arange(2), 0, shape, settings, opts)
    for t in range(2):  # the rollout's log-probs, recomputed step by step
        v = velocity(model, batch.latents[:, t], batch.sigmas[t].expand(4), batch.cond, opts)
        res = sde_step("dance", v, batch.latents[:, t], batch.sigmas[t], batch.sigmas[t + 1], 0.3,
                       prev_sample=batch.latents[:, t + 1])
        assert (res.log_prob - batch.log_probs[:, t]).abs().max() < 1e-5
    final = batch.latents[:2, -1]
    video = world.decode(final, batch.cond.select(torch.arange(2)))
    assert video.shape == (2, frames, 3, 32, 48)
    if preset(name).image_condition_type == "token_replace":
        expected = _vae_decode(root, torch.cat([batch.cond.image_latents[:2], final], dim=2))
    else:
        expected = _vae_decode(root, final)[:, 4:]
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-5)


def test_text_encoders_on_the_fly_give_the_cached_conditioning(root, tmp_path):
    from dancegrpo_hpc.data.real_world import PromptWorld

    on_the_fly = PromptWorld(real_config("tiny_t2v_real.yaml", root, tmp_path, **{
        "data.embeddings": None, "data.text_encoder": os.path.join(root, "text_encoders")}))
    cached = PromptWorld(real_config("tiny_t2v_real.yaml", root, tmp_path))
    a, b = (w.encode(T2V_PROMPTS[:3], "cpu", negative=True) for w in (on_the_fly, cached))
    for x, y in ((a, b), (a.negative, b.negative)):
        torch.testing.assert_close(x.embeds, y.embeds, rtol=1e-5, atol=1e-5)
        assert torch.equal(x.mask, y.mask) and x.mask.sum() < x.mask.numel()  # padded to 256 tokens
        torch.testing.assert_close(x.pooled, y.pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"model.preset": "tiny-i2v-concat"}, "model.path checkpoint has in_channels=4 but model.preset 'tiny-i2v-concat'"),
    ({"data.prompts": "EXTRA"}, "data.embeddings holds no embedding for 1 prompt"),
    ({"data.frames": 11}, "data.frames must be 4k \\+ 1"),
    ({"data.height": 40}, "data.height"),
])
def test_real_world_errors_name_the_field_before_loading_weights(changes, message, root, tmp_path, monkeypatch):
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.data import reference_images
    from dancegrpo_hpc.data.real_world import PromptWorld
    from dancegrpo_hpc.models.hunyuan_video import vae as hv_vae

    if changes.get("data.prompts") == "EXTRA":
        changes["data.prompts"] = str(tmp_path / "more.txt")
        (tmp_path / "more.txt").write_text("\n".join(T2V_PROMPTS + ["a yellow fish"]) + "\n")
    monkeypatch.setattr(reference_images, "load_video_vae", lambda *a, **k: pytest.fail("loaded the VAE first"))
    # the world loads it through the family's data parts (models/hunyuan_video/vae.py)
    monkeypatch.setattr(hv_vae, "load_video_vae", lambda *a, **k: pytest.fail("loaded the VAE first"))
    with pytest.raises(InputError, match=message) as err:
        config = real_config("tiny_t2v_real.yaml", root, tmp_path, **changes)
        PromptWorld(config)
    assert "\n" not in str(err.value)


def test_i2v_needs_reference_images(root, tmp_path):
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.data.real_world import PromptWorld

    config = real_config("tiny_i2v_real.yaml", root, tmp_path, **{
        "data.prompts": os.path.join(root, "prompts.txt"), "data.embeddings": os.path.join(root, "rl_embeddings")})
    with pytest.raises(InputError, match="image-to-video; data.prompts must be a .csv / .jsonl file with an `image`"):
        PromptWorld(config)


def test_loader_and_vae_tiling_come_from_the_config(root, tmp_path):
    """data.image_loader=dali (DALI's CPU decoder here) feeds the image latents, with pixels equal
    to PIL's up to the decoders' rounding; data.vae_tile_* reach the VAE."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI not installed (pip install nvidia-dali-cuda120)")
    from dancegrpo_hpc.data.real_world import PromptWorld
    from dancegrpo_hpc.data.reference_images import encode_reference_images, load_images

    world = PromptWorld(real_config("tiny_i2v_real.yaml", root, tmp_path, **{
        "data.image_loader": "dali", "data.vae_tile_size": 64, "data.vae_tile_stride": 48}))
    assert world.image_backend == "dali"
    assert world.vae.use_tiling and world.vae.tile_sample_min_height == 64 and world.vae.tile_sample_stride_width == 48
    paths = [world.images[p] for p in I2V_PROMPTS]
    dali, pil = (load_images(paths, 32, 48, backend, "cpu") for backend in ("dali", "pil"))
    # the antialiasing filters differ only at the image border (docs/DATA.md); noise images show it most
    diff = (dali - pil).abs()
    assert float(diff[..., 1:-1, 1:-1].max()) < 0.5 / 255 and float(diff.max()) < 8 / 255, \
        (float(diff[..., 1:-1, 1:-1].max()) * 255, float(diff.max()) * 255)
    expected = encode_reference_images(world.vae, dali)
    torch.testing.assert_close(world.image_latents(I2V_PROMPTS, "cpu"), expected, rtol=0, atol=0)
