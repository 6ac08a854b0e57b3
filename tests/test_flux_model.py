"""FLUX.1 against diffusers' FluxTransformer2DModel (random tiny configs, same weights):
outputs and every parameter gradient of our float32 model within rel err 1e-5 of diffusers
run in float64 (dit_parity.assert_matches_diffusers, exact), guidance on and off and
configs beyond the presets;
packing against FluxPipeline's static methods; the family's velocity against
FluxPipeline's call; weight export read back by diffusers; the cost model against the
built model and torch's FlopCounterMode; one-line errors."""

import json
import math

import pytest
import torch
from dit_parity import assert_matches_diffusers, rel
from flux_utils import diffusers_model, inputs

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.conditioning import Conditioning
from dancegrpo_hpc.models.common.weights import export_state_dict
from dancegrpo_hpc.models.family import family_of, family_of_class, get_family
from dancegrpo_hpc.models.flux import PRESETS, FluxConfig, FluxDiT, preset
from dancegrpo_hpc.models.flux import packing

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift  # noqa: E402


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("guidance", [True, False], ids=["guidance", "no-guidance"])
def test_parity_with_diffusers(guidance):
    """flux-tiny (FLUX.1-dev's layout) and its schnell twin: non-square latents (3 x 5
    tokens), text ids that rotate the text, batch 2 at different timesteps."""
    ref = diffusers_model(guidance_embeds=guidance)
    ours = FluxDiT.from_diffusers(ref)
    assert ours.config.guidance_embeds is guidance
    assert_matches_diffusers(ref, ours, inputs(ours.config), exact=True)


@pytest.mark.parametrize("changes", [
    dict(num_attention_heads=3, axes_dims_rope=(2, 8, 6)),  # odd head count, uneven RoPE axes
    dict(patch_size=2, out_channels=8, num_layers=1, num_single_layers=3),  # proj_out to patch^2 x out_channels
    dict(axes_dims_rope=(8, 8), guidance_embeds=False, num_layers=3, num_single_layers=1),  # two RoPE axes
])
def test_parity_with_configs_beyond_the_presets(changes):
    ref = diffusers_model(**changes)
    ours = FluxDiT.from_diffusers(ref)
    assert_matches_diffusers(ref, ours, inputs(ours.config, batch=1, height=8, width=4, text_len=5), exact=True)


def test_batched_ids_are_deprecated_but_accepted():
    """diffusers takes [B, N, 3] ids (the first sample's) with a deprecation warning."""
    ours = FluxDiT.from_diffusers(diffusers_model())
    inp = inputs(ours.config)
    batched = dict(inp, img_ids=inp["img_ids"].expand(2, -1, -1), txt_ids=inp["txt_ids"].expand(2, -1, -1))
    with torch.no_grad():
        want = ours(**inp)
        with pytest.warns(FutureWarning) as record:
            assert torch.equal(ours(**batched), want)
    assert sorted(str(w.message).split()[1] for w in record) == ["img_ids", "txt_ids"]
    assert all("with a batch dimension is deprecated" in str(w.message) for w in record)


def test_no_grad_checkpointing_and_bfloat16():
    """The in-place no-grad path and activation checkpointing compute the same function;
    bfloat16 tracks diffusers in bfloat16. (Not float32: diffusers casts the timestep to
    the model's dtype before x1000, so bfloat16 FLUX sees sigma 0.9 as 898.4 -> 900 and
    0.2 as 200.2 -> 200, and with random weights its output moves by ~80%; ours does the same.)"""
    ref = diffusers_model()
    plain = FluxDiT.from_diffusers(ref)
    ckpt = FluxDiT.from_diffusers(ref, checkpoint_fraction=0.5)
    assert sum(hasattr(b, "_checkpoint_wrapped_module") for blocks in ckpt.block_lists() for b in blocks) == 2
    inp = inputs(plain.config)
    with torch.no_grad():
        fast = plain(**inp)
    out = plain(**inp)
    assert torch.allclose(fast, out, atol=1e-6)
    out_ckpt = ckpt(**inp)
    assert torch.allclose(out, out_ckpt)
    out.square().sum().backward()
    out_ckpt.square().sum().backward()
    g_plain = export_state_dict(plain, tensor_of=lambda p: p.grad)
    g_ckpt = export_state_dict(ckpt, tensor_of=lambda p: p.grad)
    assert all(torch.allclose(g_plain[n], g_ckpt[n], atol=1e-6, rtol=1e-5) for n in g_plain)
    with torch.no_grad():
        low = FluxDiT.from_diffusers(ref, dtype=torch.bfloat16)(**inp)
        expected = ref.to(torch.bfloat16)(**{k: v.to(torch.bfloat16) if k.endswith("states") or k.startswith("pooled")
                                             else v for k, v in inp.items()}, return_dict=False)[0]
    assert low.dtype == torch.bfloat16 and rel(low.float(), expected.float()) < 2e-2  # bfloat16 eps 7.8e-3


def test_lora_matches_diffusers_with_peft():
    """LoRA (distributed/lora.py) reaches FLUX's fused layers through its weight plan: the
    same adapters as peft's on diffusers' model give the same output and adapter gradients."""
    peft = pytest.importorskip("peft")
    from dancegrpo_hpc.distributed import lora

    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_v_proj", "to_add_out", "ff.net.0.proj",
               "ff_context.net.2", "proj_mlp", "proj_out", "norm1.linear", "x_embedder", "context_embedder"]
    ref = diffusers_model()
    ours = FluxDiT.from_diffusers(ref)
    names = lora.apply_lora(ours, 4, 8.0, targets)
    ref.add_adapter(peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=targets))
    assert names == sorted(n for n, m in ref.named_modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer))
    adapters, gen = lora.lora_adapters(ours), torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in names:
            for ab in ("lora_A", "lora_B"):
                getattr(adapters[name], ab).normal_(0.0, 0.1, generator=gen)
                getattr(ref.get_submodule(name), ab)["default"].weight.copy_(getattr(adapters[name], ab))
    inp = inputs(ours.config)
    out, expected = ours(**inp), ref(**inp, return_dict=False)[0]
    assert rel(out, expected) <= 1e-5
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for name in names:
        for ab in ("lora_A", "lora_B"):
            want = getattr(ref.get_submodule(name), ab)["default"].weight.grad
            assert rel(getattr(adapters[name], ab).grad, want) <= 1e-5, (name, ab)


# ----------------------------------------------------------------------------- packing
def test_packing_is_the_pipelines():
    x = torch.randn(2, 4, 1, 6, 10)
    packed = packing.pack(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x[:, :, 0], 2, 4, 6, 10), rtol=0, atol=0)
    # _unpack_latents takes pixel sizes (VAE factor 8)
    torch.testing.assert_close(packing.unpack(packed, 6, 10)[:, :, 0],
                               FluxPipeline._unpack_latents(packed, 48, 80, 8), rtol=0, atol=0)
    assert torch.equal(packing.unpack(packed, 6, 10), x)
    torch.testing.assert_close(packing.image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu",
                                                                                                torch.float32))
    assert torch.equal(packing.text_ids(7), torch.zeros(7, 3))
    with pytest.raises(InputError, match="latent height and width must be even"):
        packing.pack(torch.randn(1, 4, 1, 5, 4))
    with pytest.raises(InputError, match="FLUX latents must be \\[B, C, 1, H, W\\]"):
        packing.pack(torch.randn(1, 4, 2, 4, 4))
    with pytest.raises(InputError, match="do not pack a 6 x 8 latent"):
        packing.unpack(packed, 6, 8)


# ----------------------------------------------------------------------------- the family
def test_family_registry_and_from_diffusers(tmp_path):
    from dancegrpo_hpc.models import from_diffusers

    family = get_family("flux")
    assert family_of_class("FluxTransformer2DModel") is family and family_of(preset("flux-dev")) is family
    assert set(family.presets()) >= {"flux-dev", "flux-schnell", "flux-tiny"}
    assert family.preset("flux-dev").guidance_embeds and not family.preset("flux-schnell").guidance_embeds
    assert family.conditioning_fields(preset("flux-dev")) == ["embeds", "pooled"]
    ref = diffusers_model()
    ours = from_diffusers(ref)
    assert isinstance(ours, FluxDiT) and family_of(ours) is family
    ref.save_pretrained(tmp_path / "transformer")
    assert isinstance(from_diffusers(str(tmp_path / "transformer")), FluxDiT)


@pytest.mark.parametrize("guidance", [3.5, None])
def test_velocity_is_the_pipelines_call(guidance):
    """family.velocity on the sampler's [B, C, 1, H, W] state = FluxPipeline's transformer
    call (pack, ids, timestep t / 1000 = sigma, guidance scale), unpacked."""
    from dancegrpo_hpc.rl.policy import VelocityOptions, velocity

    ref = diffusers_model(guidance_embeds=guidance is not None)
    ours = FluxDiT.from_diffusers(ref)
    b, c, h, w = 2, ours.config.latent_channels, 6, 8
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, c, 1, h, w, generator=gen)
    sigma = torch.tensor([0.8, 0.35])
    cond = Conditioning(embeds=torch.randn(b, 5, ours.config.joint_attention_dim, generator=gen),
                        pooled=torch.randn(b, ours.config.pooled_projection_dim, generator=gen))
    with torch.no_grad():
        got = velocity(ours, x, sigma, cond, VelocityOptions(guidance=guidance))
        pred = ref(hidden_states=FluxPipeline._pack_latents(x[:, :, 0], b, c, h, w), timestep=sigma,
                   guidance=None if guidance is None else torch.full((b,), guidance),
                   pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds, txt_ids=torch.zeros(5, 3),
                   img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                   return_dict=False)[0]
    expected = FluxPipeline._unpack_latents(pred, h * 8, w * 8, 8)[:, :, None]
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert rel(got, expected) <= 1e-5
    other = None if guidance is not None else 3.5
    message = "leave model.guidance unset" if other is not None else "embeds the guidance scale; set model.guidance"
    with pytest.raises(InputError, match=message):
        get_family("flux").velocity(ours, x, sigma, cond, other)


def test_dynamic_shift_is_the_pipelines():
    family = get_family("flux")
    for h, w in ((64, 64), (90, 90), (128, 96)):  # 512, 720 and 1024 x 768 pixels
        tokens = (h // 2) * (w // 2)
        assert family.latent_tokens(preset("flux-dev"), (16, 1, h, w)) == tokens
        want = math.exp(calculate_shift(tokens))
        assert family.sampling_shift(preset("flux-dev"), (16, 1, h, w), 3.0, "dynamic") == pytest.approx(want, 1e-12)
        assert family.sampling_shift(preset("flux-dev"), (16, 1, h, w), 3.0, "fixed") == 3.0


def test_check_model_errors_are_one_line():
    family, cfg = get_family("flux"), preset("flux-dev")
    family.check_model(cfg, 8, 3, (16, 1, 90, 90), "model.preset 'flux-dev'")
    for args, message in [
        ((5, 1, (16, 1, 90, 90)), "parallel.tensor x parallel.ulysses = 5 must divide the 24 attention heads"),
        ((1, 1, (4, 1, 90, 90)), "takes 16 latent channels but the data has 4"),
        ((1, 1, (16, 3, 90, 90)), "FLUX is an image model but the data gives 3 latent frames; use data.frames=1"),
        ((1, 1, (16, 1, 91, 90)), "data.height gives 91 latent pixels, not divisible by the patch size 2"),
    ]:
        with pytest.raises(InputError, match=message) as err:
            family.check_model(cfg, *args, "model.preset 'flux-dev'")
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="the FLUX family samples text-to-image models"):
        family.check_model(cfg.replace(in_channels=384, out_channels=64), 1, 1, (96, 1, 90, 90), "model.path")


# ----------------------------------------------------------------------------- weights I/O
def test_export_round_trip_through_diffusers(tmp_path):
    ref = diffusers_model()
    ours = FluxDiT.from_diffusers(ref)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    get_family("flux").save_diffusers(ours, str(single))
    ours.save_diffusers(str(sharded), max_shard_bytes=40_000)
    config = json.load(open(single / "config.json"))
    assert config["_class_name"] == "FluxTransformer2DModel" and config["axes_dims_rope"] == [4, 6, 6]
    assert len(set(json.load(open(sharded / "diffusion_pytorch_model.safetensors.index.json"))["weight_map"].values())) > 2
    inp = inputs(ours.config)
    with torch.no_grad():
        expected = ref(**inp, return_dict=False)[0]
        for path in (single, sharded):
            back = diffusers.FluxTransformer2DModel.from_pretrained(str(path))  # diffusers reads our export
            assert back.config.guidance_embeds and back.config.out_channels is None
            assert rel(back(**inp, return_dict=False)[0], expected) <= 1e-6
            assert rel(FluxDiT.from_diffusers(str(path))(**inp), expected) <= 1e-6
    exported = export_state_dict(ours)
    assert set(exported) == set(ref.state_dict())
    assert all(torch.equal(exported[n], p) for n, p in ref.state_dict().items())


def test_checkpoint_errors(tmp_path):
    from hv_utils import diffusers_model as hunyuan_model

    other = hunyuan_model("tiny")
    with pytest.raises(InputError, match="got a HunyuanVideoTransformer3DModel, not a FluxTransformer2DModel"):
        FluxDiT.from_diffusers(other)
    other.save_pretrained(str(tmp_path / "hv"))
    with pytest.raises(InputError, match="config is a HunyuanVideoTransformer3DModel, not a FluxTransformer2DModel"):
        FluxDiT.from_diffusers(str(tmp_path / "hv"))
    diffusers_model(num_layers=1).save_pretrained(str(tmp_path / "short"))
    cfg = json.load(open(tmp_path / "short" / "config.json"))
    cfg["num_layers"] = 2
    json.dump(cfg, open(tmp_path / "short" / "config.json", "w"))
    with pytest.raises(InputError, match="FLUX weights: the checkpoint lacks .* tensors the model needs"):
        FluxDiT.from_diffusers(str(tmp_path / "short"))


# ----------------------------------------------------------------------------- cost model
@pytest.mark.parametrize("name", ["flux-dev", "flux-schnell", "flux-tiny"])
def test_cost_parameters_equal_the_built_model(name):
    from dancegrpo_hpc.memory import dit_parameters

    cfg = preset(name)
    cost = get_family("flux").cost(cfg)
    built = sum(p.numel() for p in FluxDiT(cfg, device="meta").parameters())
    assert cost.parameters(1, "replicated") == dit_parameters(cfg) == built
    assert cost.hidden_size == cfg.hidden_size and cost.blocks == cfg.num_layers + cfg.num_single_layers
    assert cost.text_tokens == 512 and cost.conditioning_elements(7) == 7 * cfg.joint_attention_dim + 768 * (
        name != "flux-tiny") + 12 * (name == "flux-tiny")
    if name != "flux-tiny":
        with torch.device("meta"):
            reference = diffusers.FluxTransformer2DModel(**cfg.to_diffusers())
        assert built == sum(p.numel() for p in reference.parameters())
        assert abs(built / 11.9e9 - 1) < 0.01  # FLUX.1: 12B


@pytest.mark.parametrize("batch, height, width, text", [(1, 6, 10, 7), (2, 12, 16, 5)])
def test_forward_flops_match_flop_counter(batch, height, width, text):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from dancegrpo_hpc.perf import forward_flops

    torch.manual_seed(0)
    model = FluxDiT(preset("flux-tiny")).eval()
    inp = inputs(model.config, batch=batch, height=height, width=width, text_len=text)
    predicted = forward_flops(model.config, (height // 2) * (width // 2), text)
    # the math SDPA backend runs attention as bmm, which FlopCounterMode counts (CPU's fused kernel it does not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inp)
    assert batch * predicted["total"] == counter.get_total_flops()
    assert predicted["total"] == predicted["linear"] + predicted["attention"]


def test_communication_volumes():
    cost, cfg = get_family("flux").cost(preset("flux-dev")), preset("flux-dev")
    tokens, d = 4096 + 512, cfg.hidden_size
    assert cost.tp_bytes(tokens, 512, 1, 1, 2) == 0 and cost.ulysses_bytes(tokens, 8, 1, 2) == 0
    # 2 all-reduces per double block, 1 per single block, each 2 (tp-1)/tp of the tokens' activations
    assert cost.tp_bytes(tokens, 512, 8, 1, 2) == pytest.approx((2 * 19 + 38) * 2 * 7 / 8 * tokens * d * 2)
    assert cost.tp_bytes(tokens, 512, 8, 2, 2) == pytest.approx(cost.tp_bytes(tokens, 512, 8, 1, 2) / 2)
    # q, k, v and out all-to-all per block, (u-1)/u of this rank's tokens x local heads
    assert cost.ulysses_bytes(tokens, 2, 4, 2) == pytest.approx(57 * 4 * 3 / 4 * tokens / 4 * d / 2 * 2)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("change, message", [
    (dict(hidden_states=torch.randn(2, 4, 3, 10)), "hidden_states must be packed latents \\[B, N, 16\\]"),
    (dict(hidden_states=torch.randn(2, 15, 15)), "hidden_states has 15 channels per token but in_channels=16"),
    (dict(encoder_hidden_states=torch.randn(2, 7, 5)), "encoder_hidden_states must be \\[B=2, L, joint_attention_dim=24\\]"),
    (dict(pooled_projections=torch.randn(2, 3)), "pooled_projections must be \\[B=2, pooled_projection_dim=12\\]"),
    (dict(timestep=torch.rand(3)), "timestep must be a tensor \\[B=2\\]"),
    (dict(guidance=None), "embeds the guidance scale; pass guidance"),
    (dict(img_ids=torch.zeros(14, 3)), "img_ids must be \\[15, 3\\] \\(one id per token of hidden_states"),
    (dict(txt_ids=torch.zeros(7, 2)), "txt_ids must be \\[7, 3\\]"),
])
def test_bad_inputs(change, message):
    ours = FluxDiT(preset("flux-tiny"))
    inp = inputs(ours.config)
    inp.update(change)
    with pytest.raises(InputError, match=message) as err:
        ours(**inp)
    assert "\n" not in str(err.value)


def test_bad_configs_and_construction():
    cfg = preset("flux-tiny")
    for changes, message in [
        (dict(axes_dims_rope=(4, 6, 8)), "axes_dims_rope \\(4, 6, 8\\) sums to 18 but must equal attention_head_dim 16"),
        (dict(axes_dims_rope=(5, 5, 6)), "axes_dims_rope entries must be positive even integers"),
        (dict(num_attention_heads=0), "num_attention_heads must be a positive integer"),
        (dict(out_channels=0), "out_channels must be a positive integer or None"),
    ]:
        with pytest.raises(InputError, match=message) as err:
            cfg.replace(**changes)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown preset 'flux-pro'"):
        preset("flux-pro")
    with pytest.raises(InputError, match="has no guidance embedding"):
        FluxDiT(cfg.replace(guidance_embeds=False))(**inputs(cfg))
    from dancegrpo_hpc.attention import AttentionConfig

    with pytest.raises(InputError, match="attention backend 'sliding_tile' needs a video token grid"):
        FluxDiT(cfg, attention=AttentionConfig("sliding_tile"))
    assert FluxConfig.from_diffusers(cfg.to_diffusers()) == cfg
    assert PRESETS["flux-dev"].to_diffusers() == {
        "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
