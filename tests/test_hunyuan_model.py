"""The HunyuanVideo DiT against diffusers' HunyuanVideoTransformer3DModel (random
tiny configs, same weights): outputs and every parameter gradient; weight I/O;
activation checkpointing; the 13B config on the meta device; clear errors."""

import json
import os

import pytest
import torch
from dit_parity import assert_matches_diffusers
from hv_utils import diffusers_model, inputs, rel

from dancegrpo_hpc.attention import AttentionConfig
from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.distributed.parallel import ParallelLayout
from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT, LayerSpec, preset
from dancegrpo_hpc.models.hunyuan_video.report import parameter_report
from dancegrpo_hpc.models.hunyuan_video.weights import export_state_dict, save_diffusers

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-i2v-concat", "tiny-i2v-token-replace"])
def test_parity_with_diffusers(preset_name):
    """Padded text mask, odd frame count (3), guidance where the config embeds it."""
    ref = diffusers_model(preset_name)
    ours = HunyuanVideoDiT.from_diffusers(ref)
    assert_matches_diffusers(ref, ours, inputs(PRESETS[preset_name], frames=3, height=8, width=6))


@pytest.mark.parametrize("changes", [dict(mlp_ratio=2.5), dict(num_attention_heads=3, rope_axes_dim=(4, 8, 4)),
                                     dict(num_refiner_layers=3, mlp_ratio=3.0)])
def test_parity_with_configs_beyond_the_presets(changes):
    """Configs diffusers accepts that no preset has: an MLP ratio other than 4 (diffusers'
    token refiner keeps its own 4.0, so its MLP is wider than the blocks'), an odd head
    count with uneven RoPE axes, more refiner blocks."""
    ref = diffusers_model("tiny", **changes)
    ours = HunyuanVideoDiT.from_diffusers(ref)
    assert_matches_diffusers(ref, ours, inputs(ours.config, frames=3, height=8, width=6))


def test_parity_t2i_single_frame_and_no_mask():
    ref = diffusers_model("tiny")
    ours = HunyuanVideoDiT.from_diffusers(ref)
    inp = inputs(PRESETS["tiny"], batch=3, frames=1, height=10, width=8, text_len=5)
    inp["encoder_attention_mask"] = torch.ones(3, 5, dtype=torch.long)  # diffusers needs a mask
    assert_matches_diffusers(ref, ours, inp)
    with torch.no_grad():  # no mask means every text token is valid
        assert rel(ours(**dict(inp, encoder_attention_mask=None)), ours(**inp)) <= 1e-6


def test_text_padding_is_dropped_without_changing_the_output():
    ref = diffusers_model("tiny")
    ours = HunyuanVideoDiT.from_diffusers(ref)
    inp = inputs(PRESETS["tiny"], text_len=12)
    inp["encoder_attention_mask"][:, 5:] = 0  # a shared prompt of 5 tokens padded to 12
    assert_matches_diffusers(ref, ours, inp)
    short = dict(inp, encoder_hidden_states=inp["encoder_hidden_states"][:, :5], encoder_attention_mask=inp["encoder_attention_mask"][:, :5])
    with torch.no_grad():
        assert rel(ours(**short), ours(**inp)) <= 1e-6


def test_no_grad_forward_equals_autograd_forward():
    """The in-place fast path used without autograd computes the same function."""
    ref = diffusers_model("tiny-i2v-token-replace")
    ours = HunyuanVideoDiT.from_diffusers(ref)
    inp = inputs(PRESETS["tiny-i2v-token-replace"])
    with torch.no_grad():
        fast = ours(**inp)
    assert torch.allclose(fast, ours(**inp), atol=1e-6)


def test_bfloat16_forward_tracks_float32():
    ref = diffusers_model("tiny")
    ours = HunyuanVideoDiT.from_diffusers(ref, dtype=torch.bfloat16)
    inp = inputs(PRESETS["tiny"])
    with torch.no_grad():
        out = ours(**inp)
        expected = ref(**inp, return_dict=False)[0]
    assert out.dtype == torch.bfloat16 and rel(out.float(), expected) < 5e-2


# ----------------------------------------------------------------------------- weights I/O
def test_save_load_roundtrip_through_diffusers(tmp_path):
    ref = diffusers_model("tiny")
    ours = HunyuanVideoDiT.from_diffusers(ref)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    save_diffusers(ours, str(single))
    save_diffusers(ours, str(sharded), max_shard_bytes=200_000)
    assert (single / "diffusion_pytorch_model.safetensors").exists()
    index = json.load(open(sharded / "diffusion_pytorch_model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 2
    inp = inputs(PRESETS["tiny"])
    with torch.no_grad():
        expected = ref(**inp, return_dict=False)[0]
        for path in (single, sharded):
            back = diffusers.HunyuanVideoTransformer3DModel.from_pretrained(str(path))  # diffusers reads our export
            assert rel(back(**inp, return_dict=False)[0], expected) <= 1e-6
            assert rel(HunyuanVideoDiT.from_diffusers(str(path))(**inp), expected) <= 1e-5
    exported = export_state_dict(ours)
    assert all(torch.equal(exported[n], p) for n, p in ref.state_dict().items())


def test_checkpoint_errors(tmp_path):
    ref = diffusers_model("tiny")
    ours = HunyuanVideoDiT.from_diffusers(ref)
    good = tmp_path / "good"
    save_diffusers(ours, str(good), max_shard_bytes=200_000)

    with pytest.raises(InputError, match="is not a directory"):
        HunyuanVideoDiT.from_diffusers(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="config.json not found"):
        HunyuanVideoDiT.from_diffusers(str(empty))
    (empty / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(InputError, match="no diffusion_pytorch_model.safetensors"):
        HunyuanVideoDiT.from_diffusers(str(empty))
    partial = tmp_path / "partial"
    os.system(f"cp -r {good} {partial}")
    shard = sorted(p for p in os.listdir(partial) if p.endswith(".safetensors"))[1]
    os.remove(partial / shard)
    with pytest.raises(InputError, match="shard files listed in the index are missing"):
        HunyuanVideoDiT.from_diffusers(str(partial))
    other = diffusers_model("tiny", num_layers=1)  # a checkpoint of a different config
    wrong_cfg = tmp_path / "wrong"
    other.save_pretrained(str(wrong_cfg))
    cfg = json.load(open(wrong_cfg / "config.json"))
    cfg["num_layers"] = 2
    json.dump(cfg, open(wrong_cfg / "config.json", "w"))
    with pytest.raises(InputError, match="lacks .* tensors the model needs"):
        HunyuanVideoDiT.from_diffusers(str(wrong_cfg))
    cfg["num_layers"], cfg["mlp_ratio"] = 1, 2.0
    json.dump(cfg, open(wrong_cfg / "config.json", "w"))
    with pytest.raises(InputError, match="ff.net.0.proj.weight has shape \\(256, 64\\) but this config needs 128"):
        HunyuanVideoDiT.from_diffusers(str(wrong_cfg))
    cfg["_class_name"] = "FluxTransformer2DModel"
    json.dump(cfg, open(wrong_cfg / "config.json", "w"))
    with pytest.raises(InputError, match="not a HunyuanVideoTransformer3DModel"):
        HunyuanVideoDiT.from_diffusers(str(wrong_cfg))


# ----------------------------------------------------------------------------- checkpointing
def test_activation_checkpointing_recomputes_and_keeps_gradients():
    ref = diffusers_model("tiny")
    plain = HunyuanVideoDiT.from_diffusers(ref)
    ckpt = HunyuanVideoDiT.from_diffusers(ref, checkpoint_fraction=0.5)
    wrapped = [b for b in list(ckpt.transformer_blocks) + list(ckpt.single_transformer_blocks)
               if hasattr(b, "_checkpoint_wrapped_module")]
    assert len(wrapped) == 2  # half of the 4 blocks, spread out
    calls = []
    inner = wrapped[0]._checkpoint_wrapped_module
    forward = inner.forward
    inner.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]  # (hooks do not fire on recompute)
    inp = inputs(PRESETS["tiny"])

    def saved_bytes(model):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**inp)
        return out, total[0]

    out_plain, bytes_plain = saved_bytes(plain)
    out_ckpt, bytes_ckpt = saved_bytes(ckpt)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    assert len(calls) == 2  # forward, then the recomputation in backward
    assert bytes_ckpt < 0.75 * bytes_plain
    assert torch.allclose(out_plain, out_ckpt)
    g_plain = export_state_dict(plain, tensor_of=lambda p: p.grad)
    g_ckpt = export_state_dict(ckpt, tensor_of=lambda p: p.grad)
    assert all(torch.allclose(g_plain[n], g_ckpt[n], atol=1e-6, rtol=1e-5) for n in g_plain)


# ----------------------------------------------------------------------------- sliding tile in the model
def test_sliding_tile_attention_in_the_model():
    ref = diffusers_model("tiny")
    dense = HunyuanVideoDiT.from_diffusers(ref)
    full_window = HunyuanVideoDiT.from_diffusers(ref, attention=AttentionConfig("sliding_tile", tile=(1, 2, 1), window=(3, 3, 5)))
    local = HunyuanVideoDiT.from_diffusers(ref, attention=AttentionConfig("sliding_tile", tile=(1, 2, 1), window=(1, 1, 1)))
    inp = inputs(PRESETS["tiny"], frames=3, height=8, width=6)  # token grid 3 x 4 x 3
    out = full_window(**inp)
    assert rel(out, dense(**inp)) <= 1e-5  # a window covering the canvas is full attention
    out.square().sum().backward()  # the dense masked path trains on CPU
    assert full_window.transformer_blocks[0].attn.to_qkv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert rel(local(**inp), dense(**inp)) > 1e-3


# ----------------------------------------------------------------------------- meta device, 13B
def test_13b_config_on_meta_device():
    report = parameter_report(preset("hunyuan-t2v-13b"), tp=8)
    with torch.device("meta"):
        reference = diffusers.HunyuanVideoTransformer3DModel(**preset("hunyuan-t2v-13b").to_diffusers())
    assert report["parameters"] == sum(p.numel() for p in reference.parameters())
    assert abs(report["parameters"] / 12.8e9 - 1) <= 0.01
    assert report["parameters_per_rank"] < report["parameters"] / 2
    column = parameter_report(preset("hunyuan-t2v-13b"), tp=8, adaln="column")
    assert column["parameters_per_rank"] < report["parameters_per_rank"]
    assert column["bytes_per_rank"] == 2 * column["parameters_per_rank"]  # bfloat16


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden_states=torch.randn(2, 5, 3, 8, 6)), "has 5 channels but this variant takes in_channels=4"),
        (dict(hidden_states=torch.randn(2, 4, 3, 7, 6)), "must be divisible by the patch size"),
        (dict(hidden_states=torch.randn(2, 4, 8, 6)), "must be \\[B, C, F, H, W\\]"),
        (dict(encoder_hidden_states=torch.randn(2, 7, 5)), "encoder_hidden_states must be"),
        (dict(encoder_attention_mask=torch.ones(2, 6)), "encoder_attention_mask must be \\[B, L\\]"),
        (dict(guidance=None), "embeds the guidance scale; pass guidance"),
        (dict(pooled_projections=torch.randn(2, 3)), "pooled_projections must be"),
    ],
)
def test_bad_inputs(change, message):
    ours = HunyuanVideoDiT.from_diffusers(diffusers_model("tiny"))
    inp = inputs(PRESETS["tiny"])
    inp.update(change)
    with pytest.raises(InputError, match=message):
        ours(**inp)


def test_variant_channel_message():
    ours = HunyuanVideoDiT.from_diffusers(diffusers_model("tiny-i2v-concat"))
    inp = inputs(PRESETS["tiny"])
    with pytest.raises(InputError, match="in_channels=9 \\(noisy latent \\+ image latent \\+ mask channels\\)"):
        ours(**inp)


def test_bad_construction():
    with pytest.raises(InputError, match="heads \\(4\\) must be divisible by tp x ulysses \\(3 x 1 = 3\\)"):
        ParallelLayout(tp=3).validate(4)
    with pytest.raises(InputError, match="heads \\(24\\) must be divisible by tp x ulysses \\(4 x 4 = 16\\)"):
        ParallelLayout(tp=4, ulysses=4).validate(24)
    with pytest.raises(InputError, match="sequence_parallel needs tp > 1"):
        ParallelLayout(tp=1, sequence_parallel=True).validate(4)
    cfg = PRESETS["tiny"]
    with pytest.raises(InputError, match="backend must be one of"):
        HunyuanVideoDiT(cfg, attention=AttentionConfig("ring"))
    with pytest.raises(InputError, match="layer spec 'transformer_engine' needs transformer-engine"):
        HunyuanVideoDiT(cfg, spec=LayerSpec("transformer_engine"))
    with pytest.raises(InputError, match="'block' is a recipe of layer spec 'transformer_engine'"):
        HunyuanVideoDiT(cfg, spec=LayerSpec("local", fp8="block"))
    with pytest.raises(InputError, match="fp8 must be one of"):
        HunyuanVideoDiT(cfg, spec=LayerSpec("transformer_engine", fp8="e5m2"))
    with pytest.raises(InputError, match="adaln must be one of"):
        HunyuanVideoDiT(cfg, adaln="row")
    with pytest.raises(InputError, match="unknown preset 'hunyuan-t2v-99b'"):
        preset("hunyuan-t2v-99b")
    with pytest.raises(InputError, match="rope_axes_dim \\(4, 6, 8\\) must sum to attention_head_dim 16"):
        cfg.replace(rope_axes_dim=(4, 6, 8))
    with pytest.raises(InputError, match="activation checkpointing: fraction must lie in \\[0, 1\\]"):
        HunyuanVideoDiT(cfg, checkpoint_fraction=1.5)


def test_patch_embedding_is_the_convolution():
    """PatchEmbed runs diffusers' Conv3d (kernel = stride = patch) as one GEMM over patches."""
    from dancegrpo_hpc.models.hunyuan_video.layers import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed((1, 2, 2), 5, 12).double()
    x = torch.randn(2, 5, 3, 6, 8, dtype=torch.float64)
    want = embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x), want, rtol=1e-12, atol=1e-12)
