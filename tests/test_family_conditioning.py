"""The families' real-data parts (models/family.py `DataParts`) against diffusers' pipelines:
FLUX.1 and SD3 text encoding equals FluxPipeline / StableDiffusion3Pipeline.encode_prompt,
their VAE encode / decode equals the pipelines' latents handling (shift, scale, FLUX's
2x2 packing); the real-data world, the embedding cache and tools/precompute_embeddings.py
through the family interface; one-line errors for another family's encoders or cache, an
image-to-video option on a text-to-image family, a frame count the VAE cannot encode.
Tiny random components of the real classes, saved in the diffusers pipeline layout."""

import functools
import json
import os
import random
from types import SimpleNamespace

import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.config import config_from_dict
from dancegrpo_hpc.models.family import get_family
from dancegrpo_hpc.testing.image_families import flux_parts, save_parts, sd3_parts
from dancegrpo_hpc.testing.text_encoders import WORDS
from script_utils import load_script

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

PROMPTS = ["a red cat moving left", "the dog jumping over a small river", "zebra unicorn",  # unknown words
           " ".join(random.Random(0).choices(WORDS, k=600)),  # longer than 77 CLIP and 512 T5 tokens
           "snow on the mountain, wide shot"]
CPU = torch.device("cpu")
# the DiT configs (diffusers' config.json) the tiny parts fit: models/{flux,sd3}/config.py's tiny presets
DIT = {"flux": ("flux-tiny", "FluxTransformer2DModel"), "sd3": ("sd3-tiny", "SD3Transformer2DModel"),
       "hunyuan_video": ("tiny", "HunyuanVideoTransformer3DModel")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()  # tiny matrices: more threads only spin on a shared machine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flux():
    return flux_parts()


@pytest.fixture(scope="module")
def sd3():
    return sd3_parts()


@pytest.fixture(scope="module")
def roots(tmp_path_factory, flux, sd3):
    """Diffusers pipeline folders (text_encoder/, tokenizer/, ..., vae/) of each family."""
    base = tmp_path_factory.mktemp("roots")
    return {"flux": save_parts(base / "flux", flux), "sd3": save_parts(base / "sd3", sd3)}


def _flux_encoders(p):
    from dancegrpo_hpc.models.flux.conditioning import FluxTextEncoders

    return FluxTextEncoders(p["text_encoder"], p["tokenizer"], p["text_encoder_2"], p["tokenizer_2"])


def _sd3_encoders(p):
    from dancegrpo_hpc.models.sd3.conditioning import SD3TextEncoders

    return SD3TextEncoders(*(p[k] for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                            "text_encoder_3", "tokenizer_3")))


def _same(ours, ref):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# text: our encoders against the pipelines' encode_prompt


def test_flux_encode_equals_flux_pipeline(flux, roots):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(scheduler=None, transformer=None, **flux)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, prompt_2=None, device=CPU)
    ours = _flux_encoders(flux).encode(PROMPTS)
    _same(ours[0], embeds)
    _same(ours[1], pooled)
    assert embeds.shape == (len(PROMPTS), 512, 24) and pooled.shape == (len(PROMPTS), 12)
    assert not text_ids.any()  # zeros: the velocity makes them, nothing stores them
    # loaded from the pipeline folder through the family: the same numbers
    enc = get_family("flux").data().load_text_encoders(roots["flux"])
    assert enc.tensor_names == ("embeds", "pooled") and enc.family == "flux"
    for a, b in zip(enc.encode(PROMPTS), ours):
        assert torch.equal(a, b)
    assert enc.truncation(PROMPTS) == [(1, 512, "T5"), (1, 77, "CLIP")]
    assert enc.describe()["t5"]["class"] == "T5EncoderModel"


def test_sd3_encode_equals_sd3_pipeline_with_its_negative(sd3, roots):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(scheduler=None, transformer=None, **sd3)
    with torch.no_grad():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, None, None, device=CPU,
                                                             do_classifier_free_guidance=True)
    enc = _sd3_encoders(sd3)
    ours = enc.encode(PROMPTS)
    _same(ours[0], embeds)
    _same(ours[1], pooled)
    assert embeds.shape == (len(PROMPTS), 77 + 256, 24) and pooled.shape == (len(PROMPTS), 4 + 8)
    # CLIP-L (8) + CLIP-G (12) channels, zero-padded to T5's 24, then T5's 256 tokens
    assert not embeds[:, :77, 20:].any() and embeds[:, 77:, 20:].abs().sum() > 0
    parts = get_family("sd3").data()
    negative = enc.encode([parts.negative_prompt] * len(PROMPTS))  # CFG's unconditional branch: ""
    _same(negative[0], neg)
    _same(negative[1], neg_pooled)
    loaded = parts.load_text_encoders(roots["sd3"])
    for a, b in zip(loaded.encode(PROMPTS), ours):
        assert torch.equal(a, b)
    # one folder per encoder (model + tokenizer together) instead of the root
    folders = {}
    for key, (model, tok) in {"clip": ("text_encoder", "tokenizer"), "clip_g": ("text_encoder_2", "tokenizer_2"),
                              "t5": ("text_encoder_3", "tokenizer_3")}.items():
        folders[key] = os.path.join(roots["sd3"], model)
        for name in os.listdir(os.path.join(roots["sd3"], tok)):
            os.symlink(os.path.join(roots["sd3"], tok, name), os.path.join(folders[key], name))
    again = parts.load_text_encoders(None, folders)
    for a, b in zip(again.encode(PROMPTS[:2]), ours):
        assert torch.equal(a, b[:2])


# ---------------------------------------------------------------------------------------------
# the VAE: decode as the pipelines post-process their final latents, encode as they prepare
# image latents


def _zero_velocity(transformer):
    """The scheduler's Euler steps then keep the latents given: the pipeline decodes them."""
    transformer.register_forward_hook(lambda module, args, kwargs, out: (torch.zeros_like(out[0]),),
                                      with_kwargs=True)
    return transformer


def test_flux_vae_decode_and_encode_equal_flux_pipelines(flux):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = _zero_velocity(FluxTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6)))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), transformer=transformer,
                        **flux)
    height, width = 32, 48
    latents = torch.randn(2, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    packed = FluxPipeline._pack_latents(latents, 2, 4, height // 8, width // 8)
    with torch.no_grad():
        images = pipe(prompt=["a cat", "a dog"], height=height, width=width, num_inference_steps=2, latents=packed,
                      output_type="pt").images
    parts = get_family("flux").data()
    vae = flux["vae"]
    unpacked = FluxPipeline._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    assert torch.equal(unpacked, latents)
    video = parts.decode(vae, latents.unsqueeze(2))  # the sampler's state: unpacked, one frame
    assert video.shape == (2, 1, 3, height, width) and video.dtype == torch.float32
    torch.testing.assert_close(video[:, 0], images, rtol=0, atol=1e-6)
    # encode: FluxKontextPipeline's image latents (the posterior's mode, shift then scale)
    pixels = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = FluxKontextPipeline._encode_vae_image(SimpleNamespace(vae=vae), pixels * 2 - 1,
                                                     torch.Generator().manual_seed(3))
    got = parts.encode_images(vae, pixels)
    assert got.shape == (3, 4, 1, height // 8, width // 8)
    torch.testing.assert_close(got[:, :, 0], want, rtol=0, atol=1e-6)
    assert vae.config.shift_factor == 0.1159 and vae.config.scaling_factor == 0.3611


def test_sd3_vae_decode_and_encode_equal_sd3_pipelines(sd3, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline, \
        StableDiffusion3Pipeline
    from diffusers.pipelines.stable_diffusion_3 import pipeline_stable_diffusion_3_img2img as img2img

    torch.manual_seed(0)
    transformer = _zero_velocity(SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=24, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4,
        pos_embed_max_size=8))
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), transformer=transformer, **sd3)
    height, width = 32, 48
    latents = torch.randn(2, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = pipe(prompt=["a cat", "a dog"], height=height, width=width, num_inference_steps=2, guidance_scale=1.0,
                      latents=latents, output_type="pt").images
    parts, vae = get_family("sd3").data(), sd3["vae"]
    video = parts.decode(vae, latents.unsqueeze(2))
    torch.testing.assert_close(video[:, 0], images, rtol=0, atol=1e-6)
    # encode: StableDiffusion3Img2ImgPipeline.prepare_latents with the posterior's mode and no noise added
    monkeypatch.setattr(img2img, "retrieve_latents", functools.partial(img2img.retrieve_latents, sample_mode="argmax"))
    stub = SimpleNamespace(vae=vae, scheduler=SimpleNamespace(scale_noise=lambda sample, timestep, noise: sample))
    pixels = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = StableDiffusion3Img2ImgPipeline.prepare_latents(stub, pixels * 2 - 1, None, 3, 1, torch.float32, CPU,
                                                               torch.Generator().manual_seed(3))
    torch.testing.assert_close(parts.encode_images(vae, pixels)[:, :, 0], want, rtol=0, atol=1e-6)
    assert vae.config.shift_factor == 0.0609 and vae.config.scaling_factor == 1.5305


def test_image_vae_loads_from_its_folder_with_the_configured_tiling(flux, roots):
    parts = get_family("flux").data()
    vae = parts.load_vae(os.path.join(roots["flux"], "vae"), tiling=True, tile_size=16, tile_stride=8)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert vae.use_tiling and vae.tile_sample_min_size == 16 and vae.tile_latent_min_size == 2
    assert int(vae.tile_sample_min_size * (1 - vae.tile_overlap_factor)) == 8  # the stride in pixels
    untiled = parts.load_vae(os.path.join(roots["flux"], "vae"), tiling=False)
    z = torch.randn(1, 4, 1, 4, 4)
    assert torch.equal(untiled.state_dict()["decoder.conv_out.weight"], flux["vae"].state_dict()["decoder.conv_out.weight"])
    torch.testing.assert_close(parts.decode(untiled, z), parts.decode(flux["vae"], z), rtol=0, atol=0)
    with torch.no_grad():
        tiled = parts.decode(vae, z)
        want = ((vae.tiled_decode(z[:, :, 0] / 0.3611 + 0.1159).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(tiled[:, 0], want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the world, the cache and the cache tool through the family interface


def _checkpoint(path, family):
    preset, cls = DIT[family]
    os.makedirs(path, exist_ok=True)
    raw = dict(get_family(family).preset(preset).to_diffusers(), _class_name=cls)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f)
    return str(path)


def _config(tmp_path, family, **data):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    model = {"family": family, "preset": DIT[family][0], "path": _checkpoint(tmp_path / f"dit_{family}", family),
             "guidance": 3.5 if family == "flux" else None}
    base = {"source": "prompts", "prompts": str(prompts), "frames": 1, "height": 32, "width": 48, "eval_prompts": 1}
    return config_from_dict({"output_dir": str(tmp_path / "run"), "model": model, "data": {**base, **data},
                             "sampling": {"cfg_scale": 4.5}}, paths=False)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, roots):
    """tools/precompute_embeddings.py --family flux / sd3 on the pipeline folders."""
    base = tmp_path_factory.mktemp("caches")
    prompts = base / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = {}
    for family in ("flux", "sd3"):
        out[family] = str(base / family)
        assert load_script("tools/precompute_embeddings.py").main(
            ["--family", family, "--prompts", str(prompts), "--text-encoders", roots[family], "--out", out[family],
             "--shard-size", "2"]) == 0
    return out


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_prompt_world_through_the_family(family, roots, caches, tmp_path, flux, sd3):
    from dancegrpo_hpc.data.embedding_cache import EmbeddingCache
    from dancegrpo_hpc.data.real_world import PromptWorld

    cache = EmbeddingCache.open(caches[family])
    assert cache.family == family and cache.names == ("embeds", "pooled") and cache.index["tensors"]["embeds"][
        "shape"] == [512 if family == "flux" else 333, 24]
    vae = os.path.join(roots[family], "vae")
    cached = PromptWorld(_config(tmp_path, family, vae=vae, embeddings=caches[family]))
    live = PromptWorld(_config(tmp_path, family, vae=vae, text_encoder=roots[family]))
    assert cached.latent_shape == (4, 1, 4, 6) and not cached.image_model
    parts = flux if family == "flux" else sd3
    encoders = (_flux_encoders if family == "flux" else _sd3_encoders)(parts)
    prompts = cached.train_prompts[:2]
    embeds, pooled = encoders.encode(prompts)
    neg_embeds, neg_pooled = encoders.encode([""])
    for world in (cached, live):
        cond = world.encode(prompts, "cpu", negative=True)
        assert sorted(cond.tensors) == ["embeds", "pooled"]
        torch.testing.assert_close(cond.embeds, embeds, rtol=0, atol=1e-6)
        torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=1e-6)
        torch.testing.assert_close(cond.negative.embeds, neg_embeds.expand(2, -1, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(cond.negative.pooled, neg_pooled.expand(2, -1), rtol=0, atol=1e-6)
    z = torch.randn(2, *cached.latent_shape)
    video = cached.decode(z)
    assert video.shape == (2, 1, 3, 32, 48)
    torch.testing.assert_close(video, get_family(family).data().decode(parts["vae"], z), rtol=0, atol=1e-6)


def test_a_cache_from_before_families_is_hunyuan_videos(tmp_path):
    from dancegrpo_hpc.data.embedding_cache import EmbeddingCache, write_embedding_cache
    from dancegrpo_hpc.data.text_encoders import HunyuanTextEncoders
    from dancegrpo_hpc.testing.text_encoders import tiny_text_encoders

    enc = HunyuanTextEncoders(*tiny_text_encoders())
    write_embedding_cache(str(tmp_path), enc, PROMPTS[:3], shard_size=2)
    index = json.load(open(tmp_path / "index.json"))
    assert index["family"] == "hunyuan_video" and list(index["tensors"]) == ["embeds", "mask", "pooled"]
    before = EmbeddingCache.open(str(tmp_path)).lookup(PROMPTS[:3])
    del index["family"], index["tensors"]  # as version 1 wrote it before families
    json.dump(index, open(tmp_path / "index.json", "w"))
    old = EmbeddingCache.open(str(tmp_path), family="hunyuan_video")
    assert old.family == "hunyuan_video" and old.names == ("embeds", "mask", "pooled")
    for a, b in zip(old.lookup(PROMPTS[:3]), before):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert "model family 'hunyuan_video' but model.family is 'flux'" in _error(
        lambda: EmbeddingCache.open(str(tmp_path), family="flux"))


# ---------------------------------------------------------------------------------------------
# bad input: one line, before anything heavy loads


def _error(fn):
    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def no_heavy_loads(monkeypatch):
    """Loading a VAE or text encoders fails the test: the checks come first."""
    from dancegrpo_hpc.models import image_vae
    from dancegrpo_hpc.models.hunyuan_video import vae as hv_vae

    def fail(*args, **kwargs):
        pytest.fail("loaded a model before the checks")

    monkeypatch.setattr(hv_vae, "load_video_vae", fail)
    monkeypatch.setattr(image_vae, "load_image_vae", fail)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", fail)  # every family's encoders start there


def _vae_folder(path, cls, **config):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"_class_name": cls, "latent_channels": 4, "block_out_channels": [8, 8, 8, 8], **config}, f)
    return str(path)


def test_another_familys_text_encoders_or_cache_is_one_line(roots, caches, tmp_path, no_heavy_loads):
    from dancegrpo_hpc.data.real_world import PromptWorld

    hv_vae = _vae_folder(tmp_path / "hv_vae", "AutoencoderKLHunyuanVideo")
    hv = dict(frames=5, height=32, width=32)
    message = _error(lambda: PromptWorld(_config(tmp_path, "hunyuan_video", vae=hv_vae, embeddings=caches["flux"],
                                                 **hv)))
    assert "data.embeddings" in message and "model family 'flux' but model.family is 'hunyuan_video'" in message
    message = _error(lambda: PromptWorld(_config(tmp_path, "hunyuan_video", vae=hv_vae, text_encoder=roots["sd3"],
                                                 **hv)))
    assert "data.text_encoder" in message and "text encoders of model family 'sd3'" in message
    vae = os.path.join(roots["flux"], "vae")
    message = _error(lambda: PromptWorld(_config(tmp_path, "flux", vae=vae, text_encoder=roots["sd3"])))
    assert "model family 'sd3' (CLIP-L + CLIP-G + T5-XXL) but model family 'flux' reads CLIP-L + T5-XXL" in message
    assert "model family 'sd3' but model.family is 'flux'" in _error(
        lambda: PromptWorld(_config(tmp_path, "flux", vae=vae, embeddings=caches["sd3"])))
    # the cache tool too, before any model loads
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    tool = load_script("tools/precompute_embeddings.py")
    with pytest.raises(InputError, match="text encoders of model family 'flux'"):
        tool.check(tool.parse(["--family", "hunyuan_video", "--prompts", str(prompts), "--text-encoders",
                               roots["flux"], "--out", str(tmp_path / "o")]))
    with pytest.raises(InputError, match="--llama: model family 'sd3' has no such text encoder"):
        tool.check(tool.parse(["--family", "sd3", "--prompts", str(prompts), "--llama", roots["flux"],
                               "--out", str(tmp_path / "o")]))
    with pytest.raises(InputError, match="--family 'wan' is not a model family"):
        tool.check(tool.parse(["--family", "wan", "--prompts", str(prompts), "--out", str(tmp_path / "o")]))


def test_image_options_on_a_text_to_image_family_are_one_line(roots, caches, tmp_path, no_heavy_loads):
    from dancegrpo_hpc.data.real_world import PromptWorld

    vae, cache = os.path.join(roots["flux"], "vae"), caches["flux"]
    (tmp_path / "images").mkdir()
    message = _error(lambda: PromptWorld(_config(tmp_path, "flux", vae=vae, embeddings=cache,
                                                 reference_images=str(tmp_path / "images"))))
    assert "data.reference_images is set but model.preset 'flux-tiny' of model family 'flux'" in message
    message = _error(lambda: PromptWorld(_config(tmp_path, "sd3", vae=os.path.join(roots["sd3"], "vae"),
                                                 embeddings=caches["sd3"], frames=5)))
    assert "data.frames=5, but model family 'sd3' generates images (one-frame videos); set data.frames=1" in message
    message = _error(lambda: PromptWorld(_config(tmp_path, "flux", embeddings=cache,
                                                 vae=_vae_folder(tmp_path / "hv", "AutoencoderKLHunyuanVideo"))))
    assert "data.vae holds a AutoencoderKLHunyuanVideo but model family 'flux' decodes with AutoencoderKL" in message
    message = _error(lambda: PromptWorld(_config(tmp_path, "flux", embeddings=cache, vae=_vae_folder(
        tmp_path / "wide", "AutoencoderKL", latent_channels=16))))
    assert "data.vae has 16 latent channels but model.path's FLUX.1 model takes 4" in message
    # the video family: a frame count its VAE cannot encode, a VAE of another family
    hv_vae = _vae_folder(tmp_path / "hv_vae", "AutoencoderKLHunyuanVideo", temporal_compression_ratio=8)
    assert "data.frames must be 8k + 1 for data.vae; got 5" in _error(
        lambda: PromptWorld(_config(tmp_path, "hunyuan_video", vae=hv_vae, embeddings=cache, frames=5, width=32)))
    assert "data.vae holds a AutoencoderKL but model family 'hunyuan_video' decodes with AutoencoderKLHunyuanVideo" \
        in _error(lambda: PromptWorld(_config(tmp_path, "hunyuan_video", vae=vae, embeddings=cache, frames=5)))


def test_a_family_without_data_parts_is_one_line():
    from dancegrpo_hpc.models.family import ModelFamily

    class Bare(ModelFamily):
        name = "bare"

    Bare.__module__ = "dancegrpo_hpc.models.bare.family"  # a family folder without conditioning.py

    assert "model family 'bare' has no real-data parts yet" in _error(lambda: Bare().data())
