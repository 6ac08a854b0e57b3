"""The SDPA backend's kernel choice and the cuDNN backward's gradient layout (issue #14, 1.2).

PyTorch caches cuDNN's SDPA backward graph by q, k, v's shapes and strides, but builds it for
the strides of the first grad_output it sees (aten/src/ATen/native/cudnn/MHA.cpp,
run_cudnn_SDP_bprop): our single- and dual-stream blocks feed the same q, k, v layout but hand
back gradients of different strides. backends.grad_in_output_layout gives every call the
gradient in the output's own layout."""

import pytest
import torch
import torch.nn.functional as F

from dancegrpo_hpc.attention import AttentionConfig, JointMask, attention
from dancegrpo_hpc.attention.backends import DEFAULT_CUDA_KERNELS, grad_in_output_layout
from dancegrpo_hpc.checks import InputError


def test_gradient_reaches_sdpa_in_the_output_layout():
    out = torch.randn(1, 10, 3, 4).transpose(1, 2).requires_grad_(True)  # [B, S, H, D] memory, [B, H, S, D] view
    seen = {}
    wrapped = grad_in_output_layout(out)
    wrapped.register_hook(lambda g: seen.update(into_identity=g.stride()))
    out.register_hook(lambda g: seen.update(into_sdpa=(g.stride(), g.clone())))
    wide = torch.randn(10, 1, 3 * 4 + 7)  # the single block: [attention | mlp] concatenated, sliced
    consumer = torch.cat([wrapped.transpose(1, 2).transpose(0, 1).flatten(2), torch.zeros(10, 1, 7)], dim=-1)
    (consumer * wide).sum().backward()
    expected = wide[..., :12].unflatten(-1, (3, 4)).transpose(0, 1).transpose(1, 2)  # d(out) of the sum
    assert seen["into_identity"] != out.stride()  # the consumer's gradient has other strides ...
    stride, grad = seen["into_sdpa"]
    assert stride == out.stride()  # ... SDPA's backward receives them in the output's layout
    assert torch.equal(grad, expected)


def test_same_layout_gradient_is_not_copied():
    out = torch.randn(2, 3, 5, 4, requires_grad=True)
    grad = torch.randn(2, 3, 5, 4)
    result = {}
    out.register_hook(lambda g: result.update(ptr=g.data_ptr()))
    grad_in_output_layout(out).backward(grad)
    assert result["ptr"] == grad.data_ptr()


def test_sdpa_kernel_names_are_checked():
    AttentionConfig("sdpa", sdpa_kernels=("flash", "math")).validate(2)
    with pytest.raises(InputError, match="sdpa_kernels"):
        AttentionConfig("sdpa", sdpa_kernels=("cudnn", "fast")).validate(2)
    assert DEFAULT_CUDA_KERNELS[0] == "cudnn"


def test_cpu_kernel_choice_computes_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 2, 8, dtype=torch.float64) for _ in range(3))
    mask = JointMask(8, 0, 4, None, (2, 2, 2))
    want = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    got = attention(q, k, v, mask, AttentionConfig("sdpa", sdpa_kernels=("math",)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _grads(q, k, v, config, mask, wide):
    for t in (q, k, v):
        t.grad = None
    first = attention(q, k, v, mask, config)  # dual-stream-like consumer: contiguous gradient
    second = attention(q, k, v, mask, config)  # single-stream-like consumer: a slice of a wider gradient
    s, b, h, d = second.shape[1], second.shape[0], second.shape[2], second.shape[3]
    joint = torch.cat([second.transpose(0, 1).flatten(2), torch.zeros(s, b, wide, device=q.device, dtype=q.dtype)], -1)
    loss = first.float().square().mean() + (joint.float() * torch.linspace(-1, 1, joint.shape[-1], device=q.device)).mean()
    loss.backward()
    return [t.grad.float().clone() for t in (q, k, v)]


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [320, 12856])
def test_cudnn_training_backward_matches_flash(tokens):
    """The failing pattern at the issue's size (12,600 video + 256 text tokens, 24 x 128 heads, bf16)
    and at a small one: cuDNN (the default first kernel) against flash."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, tokens, 24, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
               for _ in range(3))
    mask = JointMask(tokens - 256, 0, 256, None, (1, 1, tokens - 256))
    got = _grads(q, k, v, AttentionConfig("sdpa"), mask, wide=4 * 3072)
    want = _grads(q, k, v, AttentionConfig("sdpa", sdpa_kernels=("flash",)), mask, wide=4 * 3072)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        # two bf16 kernels with float32 accumulation: relative L2 difference ~1e-3 (bf16 output rounding)
        assert ((a - b).norm() / b.norm()).item() < 2e-2


@pytest.mark.gpu
def test_dit_trains_at_the_issue_size():
    """The first H200 run's failure: our DiT at the 13B width, 12,600 video + 256 text tokens, bf16,
    one dual- and one single-stream block, a training step with SDPA's default kernels (cuDNN
    first). Its gradients must match the flash-only model's (same weights) to bf16 precision."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset

    parallel.initialize(seed=0)
    cfg = preset("hunyuan-t2v-13b").replace(num_layers=1, num_single_layers=1, num_refiner_layers=1)
    g = torch.Generator("cuda").manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 14, 60, 60, device="cuda", dtype=torch.bfloat16, generator=g),
                  timestep=torch.full((1,), 500.0, device="cuda"),
                  encoder_hidden_states=torch.randn(1, 256, 4096, device="cuda", dtype=torch.bfloat16, generator=g),
                  pooled_projections=torch.randn(1, 768, device="cuda", dtype=torch.bfloat16, generator=g),
                  guidance=torch.full((1,), 6000.0, device="cuda"))
    grads = []
    state = None
    for kernels in (None, ("flash",)):
        model = HunyuanVideoDiT(cfg, attention=AttentionConfig("sdpa", sdpa_kernels=kernels), dtype=torch.bfloat16,
                                device="cuda", init_weights=state is None)
        if state is None:
            state = model.state_dict()
        else:
            model.load_state_dict(state)
        out = model(**inputs)
        out.float().square().mean().backward()
        torch.cuda.synchronize()  # a faulting kernel reports here, not at a later cuBLAS call
        grads.append({n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None})
        del model, out
    for name, want in grads[1].items():
        got = grads[0][name]
        assert torch.isfinite(got).all(), name
        # two bf16 attention kernels with float32 accumulation feed the same bf16 network
        assert ((got - want).norm() / want.norm().clamp(min=1e-12)).item() < 5e-2, name
    parallel.destroy()
