"""GPU paths of the DiT (run on a CUDA machine): attention backends against SDPA,
sliding-tile FlexAttention training, the Transformer Engine layer spec and FP8."""

import pytest
import torch
from hv_utils import diffusers_model, inputs, rel

from dancegrpo_hpc.attention import AttentionConfig, JointMask, attention
from dancegrpo_hpc.attention.sliding_tile import sliding_tile_attention
from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT, LayerSpec

pytestmark = pytest.mark.gpu


def qkv(b=2, s=300, h=4, d=64, dtype=torch.bfloat16):
    return [torch.randn(b, s, h, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("backend, module", [("flash", "flash_attn"), ("xformers", "xformers"), ("te", "transformer_engine")])
def test_packed_backends_match_sdpa(backend, module):
    pytest.importorskip(module)
    mask = JointMask(280, 4, 16, torch.tensor([16, 9], device="cuda"), (7, 5, 8))
    q, k, v = qkv(s=mask.length)
    out = attention(q, k, v, mask, AttentionConfig(backend))
    ref = attention(q, k, v, mask, AttentionConfig("sdpa"))
    valid = mask.key_valid(2, "cuda")
    assert rel(out[valid].float(), ref[valid].float()) < 2e-2
    out[valid].float().square().sum().backward()


def test_sliding_tile_flex_trains_on_cuda():
    mask = JointMask(6 * 8 * 8 * 2, 0, 32, torch.tensor([32, 20], device="cuda"), (6, 16, 8))
    cfg = AttentionConfig("sliding_tile", tile=(6, 8, 8), window=(1, 1, 1))
    q, k, v = qkv(s=mask.length)
    flex = sliding_tile_attention(q, k, v, mask, cfg)
    dense = sliding_tile_attention(q, k, v, mask, cfg, force_dense=True)
    valid = mask.key_valid(2, "cuda")
    assert rel(flex[valid].float(), dense[valid].float()) < 2e-2
    flex.float().square().mean().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_model_on_cuda_bf16_tracks_cpu_float32():
    ref = diffusers_model("tiny")
    inp = inputs(PRESETS["tiny"])
    cpu = HunyuanVideoDiT.from_diffusers(ref)
    gpu = HunyuanVideoDiT.from_diffusers(ref, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        expected = cpu(**inp)
        got = gpu(**{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in inp.items()})
    assert rel(got.float().cpu(), expected) < 5e-2


@pytest.mark.parametrize("fp8", [None, "delayed", "current", "block"])
def test_transformer_engine_spec(fp8):
    pytest.importorskip("transformer_engine")
    cfg = PRESETS["tiny"].replace(num_attention_heads=4, attention_head_dim=32, rope_axes_dim=(8, 12, 12))
    ref = diffusers_model("tiny", num_attention_heads=4, attention_head_dim=32, rope_axes_dim=(8, 12, 12))
    local = HunyuanVideoDiT.from_diffusers(ref, dtype=torch.bfloat16, device="cuda")
    te_model = HunyuanVideoDiT.from_diffusers(ref, dtype=torch.bfloat16, device="cuda",
                                              spec=LayerSpec("transformer_engine", fp8=fp8))
    inp = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in inputs(cfg, height=16, width=16).items()}
    out = te_model(**inp)
    expected = local(**inp)
    assert rel(out.float(), expected.float()) < (3e-2 if fp8 is None else 0.15)
    out.float().square().mean().backward()
