"""The SD3 / SD3.5 transformer against diffusers' SD3Transformer2DModel (random tiny configs,
same weights): outputs and every parameter gradient for SD3 (no qk-norm), SD3.5 large (qk
RMSNorm) and SD3.5 medium (dual attention) layouts, odd head counts, non-square latents
cropped from the position table; weight I/O through diffusers; the family seam; the cost
model against the meta-device models (ours and diffusers') and torch's FLOP counter; errors."""

import inspect
import json

import pytest
import torch
from sd3_utils import assert_grads_match, assert_matches_diffusers, diffusers_model, inputs, rel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.conditioning import Conditioning
from dancegrpo_hpc.models.family import family_of, family_of_class, get_family
from dancegrpo_hpc.models.sd3 import PRESETS, SD3Config, SD3DiT, preset
from dancegrpo_hpc.models.sd3.weights import export_state_dict, plan, save_diffusers

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", ["sd3-tiny", "sd3.5-large-tiny", "sd3.5-medium-tiny"])
def test_parity_with_diffusers(name):
    """8 x 6 latents: 4 x 3 patches cropped from the centre of the 12 x 12 table."""
    ref = diffusers_model(name)
    assert_matches_diffusers(ref, SD3DiT.from_diffusers(ref), inputs(PRESETS[name], height=8, width=6))


@pytest.mark.parametrize("name, changes, shape", [
    ("sd3-tiny", dict(num_attention_heads=3, caption_projection_dim=24), (10, 4)),  # odd heads
    ("sd3.5-medium-tiny", dict(dual_attention_layers=(0, 2)), (6, 6)),  # the context_pre_only block has attn2
    ("sd3.5-large-tiny", dict(pos_embed_max_size=None, sample_size=12), (6, 10)),  # table computed per latent
    ("sd3-tiny", dict(patch_size=1, out_channels=None, sample_size=8), (5, 7)),  # patch 1, out = in channels
    ("sd3-tiny", {}, (24, 24)),  # the whole 12 x 12 table, no crop
], ids=["odd-heads", "dual-last-block", "no-max-size", "patch1", "full-table"])
def test_parity_with_configs_beyond_the_presets(name, changes, shape):
    ref = diffusers_model(name, **changes)
    ours = SD3DiT.from_diffusers(ref, checkpoint_fraction=0.5)
    assert_matches_diffusers(ref, ours, inputs(ours.config, batch=3, height=shape[0], width=shape[1], text_len=5))


def test_no_grad_forward_equals_autograd_forward_and_bfloat16_tracks_float32():
    ref = diffusers_model("sd3.5-medium-tiny")
    ours = SD3DiT.from_diffusers(ref)
    inp = inputs(PRESETS["sd3.5-medium-tiny"])
    with torch.no_grad():  # the in-place fast path
        fast = ours(**inp)
    assert torch.allclose(fast, ours(**inp), atol=1e-6)
    half = SD3DiT.from_diffusers(ref, dtype=torch.bfloat16)
    with torch.no_grad():
        out = half(**inp)
    assert out.dtype == torch.bfloat16 and rel(out.float(), fast) < 5e-2


# ----------------------------------------------------------------------------- weights I/O
def test_save_load_roundtrip_through_diffusers(tmp_path):
    ref = diffusers_model("sd3.5-medium-tiny")
    ours = SD3DiT.from_diffusers(ref)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    ours.save_diffusers(str(single))
    save_diffusers(ours, str(sharded), max_shard_bytes=20_000)
    assert (single / "diffusion_pytorch_model.safetensors").exists()
    index = json.load(open(sharded / "diffusion_pytorch_model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 2 and "pos_embed.pos_embed" in index["weight_map"]
    inp = inputs(PRESETS["sd3.5-medium-tiny"])
    with torch.no_grad():
        expected = ref(**inp, return_dict=False)[0]
        for path in (single, sharded):
            back = diffusers.SD3Transformer2DModel.from_pretrained(str(path))  # diffusers reads our export
            assert list(back.config.dual_attention_layers) == [0, 1] and back.config.qk_norm == "rms_norm"
            assert rel(back(**inp, return_dict=False)[0], expected) <= 1e-6
            assert rel(SD3DiT.from_diffusers(str(path))(**inp), expected) <= 1e-5
    exported = export_state_dict(ours)
    assert set(exported) == set(ref.state_dict())
    assert all(torch.equal(exported[n], t) for n, t in ref.state_dict().items())


def test_checkpoint_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    ref = diffusers_model("sd3-tiny")
    good = tmp_path / "good"
    ref.save_pretrained(str(good))
    weights = load_file(str(good / "diffusion_pytorch_model.safetensors"))

    def folder(name, state, **config_changes):
        path = tmp_path / name
        path.mkdir()
        config = dict(json.load(open(good / "config.json")), **config_changes)
        (path / "config.json").write_text(json.dumps(config))
        save_file(state, str(path / "diffusion_pytorch_model.safetensors"))
        return str(path)

    with pytest.raises(InputError, match="is not a directory"):
        SD3DiT.from_diffusers(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="not a SD3Transformer2DModel"):
        SD3DiT.from_diffusers(folder("other", weights, _class_name="FluxTransformer2DModel"))
    with pytest.raises(InputError, match="lacks 1 tensors the model needs, e.g. pos_embed.pos_embed"):
        SD3DiT.from_diffusers(folder("missing", {k: v for k, v in weights.items() if k != "pos_embed.pos_embed"}))
    with pytest.raises(InputError, match="has 2 tensors this config does not use.*norm_q"):
        SD3DiT.from_diffusers(folder("extra", dict(weights, **{"transformer_blocks.0.attn.norm_q.weight": torch.ones(8),
                                                               "transformer_blocks.0.attn.norm_k.weight": torch.ones(8)})))
    with pytest.raises(InputError, match="attn.to_k.weight has shape"):
        SD3DiT.from_diffusers(folder("shape", dict(weights, **{"transformer_blocks.0.attn.to_k.weight":
                                                               torch.ones(16, 32)})))
    with pytest.raises(InputError, match="SD3DiT.from_diffusers: got a Linear"):
        SD3DiT.from_diffusers(torch.nn.Linear(2, 2))


def test_lora_through_the_weight_plan_matches_diffusers_with_peft():
    """Adapters on SD3.5 medium's linears (attn2's too) by their diffusers names: the output
    and every adapter gradient equal diffusers + peft with the same (non-zero) factors."""
    peft = pytest.importorskip("peft")
    from dancegrpo_hpc.distributed import lora

    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "norm1.linear"]
    ref = diffusers_model("sd3.5-medium-tiny")
    ours = SD3DiT.from_diffusers(ref)
    names = lora.apply_lora(ours, 4, 8.0, targets)
    assert "transformer_blocks.0.attn2.to_q" in names and "transformer_blocks.2.attn.to_add_out" not in names
    base = set(ref.state_dict())
    ref.add_adapter(peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=targets))
    adapters, gen = lora.lora_adapters(ours), torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in names:
            layer = ref.get_submodule(name)
            for ours_factor, theirs in ((adapters[name].lora_A, layer.lora_A["default"].weight),
                                        (adapters[name].lora_B, layer.lora_B["default"].weight)):
                theirs.copy_(ours_factor.normal_(0.0, 0.1, generator=gen))
    inp = inputs(PRESETS["sd3.5-medium-tiny"])
    out, expected = ours(**inp), ref(**inp, return_dict=False)[0]
    assert rel(out, expected) <= 1e-5
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    ours_grads, their_grads = {}, {}
    for name in names:  # the last block's text queries are unused: add_q_proj's factors get zero gradients
        layer = ref.get_submodule(name)
        for f in "AB":
            ours_grads[f"{name}.{f}"] = getattr(adapters[name], f"lora_{f}").grad
            their_grads[f"{name}.{f}"] = getattr(layer, f"lora_{f}")["default"].weight.grad
    assert_grads_match(ours_grads, their_grads, 1e-5)
    assert set(export_state_dict(ours)) == base  # adapters are no base weights


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("change, message", [
    (dict(hidden_states=torch.randn(2, 4, 1, 8, 6)), r"hidden_states must be latents \[B, C, H, W\]"),
    (dict(hidden_states=torch.randn(2, 5, 8, 6)), "has 5 channels but in_channels=4"),
    (dict(hidden_states=torch.randn(2, 4, 7, 6)), "must be divisible by patch_size=2"),
    (dict(hidden_states=torch.randn(2, 4, 8, 26)), "4 x 13 patches, more than the position table's "
                                                   "pos_embed_max_size=12 per side; use at most 24"),
    (dict(encoder_hidden_states=torch.randn(2, 7, 16)), r"encoder_hidden_states must be \[B=2, L, joint_attention_dim=24\]"),
    (dict(pooled_projections=torch.randn(2, 5)), r"pooled_projections must be \[B=2, pooled_projection_dim=12\]"),
    (dict(timestep=torch.ones(3)), r"timestep must be a tensor \[B=2\]"),
    (dict(timestep=500.0), r"timestep must be a tensor \[B=2\]"),
])
def test_bad_inputs_are_one_line_errors(change, message):
    model = SD3DiT(preset("sd3-tiny"))
    with pytest.raises(InputError, match=message) as err:
        model(**dict(inputs(PRESETS["sd3-tiny"]), **change))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("changes, message", [
    (dict(caption_projection_dim=24), "caption_projection_dim 24 must equal .* set caption_projection_dim=32"),
    (dict(qk_norm="layer_norm"), "qk_norm must be None .SD3. or 'rms_norm' .SD3.5.; got 'layer_norm'"),
    (dict(dual_attention_layers=(0, 2)), r"dual_attention_layers must list block indices in 0..1 \(num_layers=2\)"),
    (dict(out_channels=0), "out_channels must be a positive integer or None"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(attention_head_dim=3, num_attention_heads=3, caption_projection_dim=9), "must divide by 4"),
])
def test_bad_configs_are_one_line_errors(changes, message):
    with pytest.raises(InputError, match=message) as err:
        PRESETS["sd3-tiny"].replace(**changes)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown preset 'sd4'"):
        preset("sd4")


def test_config_round_trips_through_diffusers_dicts():
    for name, cfg in PRESETS.items():
        raw = json.loads(json.dumps(cfg.to_diffusers()))  # as config.json holds it
        assert SD3Config.from_diffusers(raw, variant=name) == cfg
    fields = set(inspect.signature(diffusers.SD3Transformer2DModel.__init__).parameters) - {"self"}
    assert set(PRESETS["sd3-tiny"].to_diffusers()) == fields  # every field diffusers takes, nothing else


# ----------------------------------------------------------------------------- family seam
def test_velocity_through_the_seam_is_the_transformer():
    family = get_family("sd3")
    assert family_of_class("SD3Transformer2DModel") is family and family_of(PRESETS["sd3-tiny"]) is family
    cfg = preset("sd3.5-medium-tiny")
    torch.manual_seed(0)
    model = family.build(cfg)
    x, sigma = torch.randn(2, 4, 1, 8, 6), torch.tensor([0.9, 0.4])
    cond = Conditioning(embeds=torch.randn(2, 7, cfg.joint_attention_dim), pooled=torch.randn(2, 12))
    with torch.no_grad():
        got = family.velocity(model, x, sigma, cond, None)
        expected = model(x[:, :, 0], cond.embeds, cond.pooled, sigma * 1000)
    assert got.shape == x.shape and got.dtype == torch.float32 and torch.equal(got[:, :, 0], expected)
    with pytest.raises(InputError, match="SD3 has no guidance embedding; leave model.guidance unset"):
        family.velocity(model, x, sigma, cond, 3.5)
    assert family.conditioning_fields(cfg) == ["embeds", "pooled"] and not family.is_image_model(cfg)
    assert family.latent_tokens(cfg, (4, 1, 8, 6)) == 12
    family.check_model(cfg, 2, 2, (4, 1, 24, 24), "model.preset 'x'")
    for shape, message in [((4, 2, 8, 8), "generates images: set data.frames=1"),
                           ((16, 1, 8, 8), "predicts 4 latent channels but the data has 16"),
                           ((4, 1, 26, 8), "data.height gives 13 latent patches, more than pos_embed_max_size=12"),
                           ((4, 1, 9, 8), "not divisible by the patch size 2")]:
        with pytest.raises(InputError, match=message):
            family.check_model(cfg, 1, 1, shape, "model.preset 'x'")
    with pytest.raises(InputError, match="must divide the 4 attention heads"):
        family.check_model(cfg, 4, 2, (4, 1, 8, 8), "model.preset 'x'")
    from dancegrpo_hpc.models import from_diffusers

    assert isinstance(from_diffusers(diffusers_model("sd3-tiny")), SD3DiT)


# ----------------------------------------------------------------------------- cost model
def _per_rank(model, tp):
    """Parameters on one of tp ranks, from the tp = 1 model and its weight plan."""
    pieces = plan(model, 0)
    return sum(p.numel() // tp if any(pc.dim is not None for pc in pieces[n][0]) else p.numel()
               for n, p in model.named_parameters())


@pytest.mark.parametrize("name", ["sd3-tiny", "sd3.5-medium-tiny", "sd3.5-large-tiny", "sd3-medium", "sd3.5-medium",
                                  "sd3.5-large"])
def test_parameter_count_equals_the_meta_device_models(name):
    """Ours at TP 1 and 2 (sd3_distributed holds a real TP 2 model too), and diffusers' own model."""
    cfg = preset(name)
    cost = get_family("sd3").cost(cfg)
    for adaln in ("replicated", "column"):
        model = SD3DiT(cfg, device="meta", adaln=adaln)
        assert cost.parameters(1, adaln) == sum(p.numel() for p in model.parameters())
        assert cost.parameters(2, adaln) == _per_rank(model, 2), adaln
    with torch.device("meta"):
        reference = diffusers.SD3Transformer2DModel(**cfg.to_diffusers())
    assert cost.parameters(1, "replicated") == sum(p.numel() for p in reference.parameters())
    assert cost.hidden_size == cfg.hidden_size and cost.blocks == cfg.num_layers and cost.text_tokens == 333
    assert cost.conditioning_elements(10) == 10 * cfg.joint_attention_dim + cfg.pooled_projection_dim


def test_released_sizes():
    """SD3.5 medium about 2.5B parameters, large about 8.1B (Stability AI's model cards)."""
    billions = {n: get_family("sd3").cost(preset(n)).parameters(1, "replicated") / 1e9
                for n in ("sd3-medium", "sd3.5-medium", "sd3.5-large")}
    assert 2.0 < billions["sd3-medium"] < billions["sd3.5-medium"] < 2.6 and 8.0 < billions["sd3.5-large"] < 8.3


@pytest.mark.parametrize("name, batch, shape, text", [("sd3-tiny", 1, (8, 6), 7), ("sd3.5-medium-tiny", 2, (12, 10), 5)])
def test_forward_flops_match_flop_counter(name, batch, shape, text):
    cfg = preset(name)
    model = SD3DiT(cfg)
    inp = inputs(cfg, batch=batch, height=shape[0], width=shape[1], text_len=text)
    # the math SDPA backend runs attention as bmm, which FlopCounterMode counts (CPU's fused kernel it does not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inp)
    predicted = get_family("sd3").cost(cfg).forward_flops((shape[0] // 2) * (shape[1] // 2), text)
    assert abs(batch * predicted["total"] - counter.get_total_flops()) / counter.get_total_flops() < 0.02
    assert predicted["total"] == predicted["linear"] + predicted["attention"]
