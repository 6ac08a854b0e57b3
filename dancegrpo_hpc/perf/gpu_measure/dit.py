"""DiT train-step MFU: our HunyuanVideoDiT at the 13B width but few blocks, random init,
built in bf16 on the device, timed forward (no autograd, as in rollouts) and forward +
backward (a training step without the optimizer).

FLOPs are the performance model's (perf.model.forward_flops: matmuls, 2 per MAC, checked
against FlopCounterMode in tests/test_perf_model.py). A training step is forward +
backward (2x) + the recompute of the checkpointed fraction, as perf.model counts a
trained pair. MFU is against the dense BF16 Tensor Core peak of the detected preset.
"""

from __future__ import annotations

from typing import Dict

import torch

from .common import Sizes, peak_memory, reset_peak_memory, time_calls


def model_config(s: Sizes):
    from ...models.hunyuan_video import preset

    return preset(s.preset).replace(num_layers=s.layers, num_single_layers=s.single_layers,
                                     variant=f"{s.preset} ({s.layers} dual + {s.single_layers} single blocks)")


def video_tokens(cfg, latent) -> int:
    f, h, w = latent
    return (f // cfg.patch_size_t) * (h // cfg.patch_size) * (w // cfg.patch_size)


def step_flops(cfg, s: Sizes) -> Dict[str, float]:
    """Matmul FLOPs of one forward and one training step of the whole batch."""
    from ..model import forward_flops

    fwd = forward_flops(cfg, video_tokens(cfg, s.latent), s.text_tokens)
    forward = s.batch * fwd["total"]
    return {"forward": forward, "train_step": forward * (3 + s.checkpoint_fraction),
            "forward_linear": s.batch * fwd["linear"], "forward_attention": s.batch * fwd["attention"]}


def _inputs(cfg, s: Sizes, device, dtype) -> Dict:
    b = s.batch
    gen = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    return dict(hidden_states=randn(b, cfg.in_channels, *s.latent), timestep=torch.full((b,), 500.0, device=device),
                encoder_hidden_states=randn(b, s.text_tokens, cfg.text_embed_dim),
                pooled_projections=randn(b, cfg.pooled_projection_dim),
                guidance=torch.full((b,), 6000.0, device=device) if cfg.guidance_embeds else None)


def measure_dit(s: Sizes, device: torch.device, facts: Dict) -> Dict:
    import torch.distributed as dist

    from ...attention import AttentionConfig
    from ...distributed import parallel
    from ...models.hunyuan_video import HunyuanVideoDiT

    cfg, dtype = model_config(s), torch.bfloat16
    owns_dist = not dist.is_initialized()
    kernels = tuple(k.strip() for k in s.sdpa_kernels.split(",")) if s.sdpa_kernels else None
    try:
        parallel.initialize(seed=0)  # seeds megatron's CUDA RNG tracker, which its GPU weight init reads
        torch.manual_seed(0)
        model = HunyuanVideoDiT(cfg, attention=AttentionConfig(s.backend, sdpa_kernels=kernels), dtype=dtype,
                                device=device, checkpoint_fraction=s.checkpoint_fraction, compile=s.compile)
        inputs = _inputs(cfg, s, device, dtype)  # text unmasked: all text_tokens attend, as the FLOPs count them
        grad = torch.randn(s.batch, cfg.out_channels, *s.latent, device=device, dtype=dtype)

        def forward():
            with torch.no_grad():
                model(**inputs)

        def train_step():
            model.zero_grad(set_to_none=True)
            model(**inputs).backward(grad)

        flops = step_flops(cfg, s)
        passes = {}
        for name, fn, key in (("forward", forward, "forward"), ("train_step", train_step, "train_step")):
            first = time_calls(fn, device, 0, 1)["median"]  # compiles when compile is on
            reset_peak_memory(device)
            seconds = time_calls(fn, device, s.warmup, s.reps)
            rate = flops[key] / seconds["median"]
            passes[name] = {"seconds": seconds, "first_call_s": first, "flops": flops[key], "flops_per_s": rate,
                            "peak_memory_bytes": peak_memory(device)}
            if s.profile > 0:
                passes[name]["top_kernels"] = top_kernels(fn, device, s.profile)
            if facts.get("peak_bf16_flops_s"):
                passes[name]["mfu"] = rate / facts["peak_bf16_flops_s"]
        params = sum(p.numel() for p in model.parameters())
    finally:
        if owns_dist:
            parallel.destroy()
    return {"model": {"preset": s.preset, "hidden_size": cfg.hidden_size, "heads": cfg.num_attention_heads,
                      "head_dim": cfg.attention_head_dim, "mlp_hidden": cfg.mlp_hidden, "dual_blocks": s.layers,
                      "single_blocks": s.single_layers, "refiner_blocks": cfg.num_refiner_layers,
                      "text_embed_dim": cfg.text_embed_dim, "pooled_dim": cfg.pooled_projection_dim,
                      "rope_axes_dim": list(cfg.rope_axes_dim), "parameters": params, "dtype": "bfloat16",
                      "attention_backend": s.backend, "sdpa_kernels": list(kernels) if kernels else "default",
                      "compile": s.compile, "checkpoint_fraction": s.checkpoint_fraction},
            "batch": s.batch, "latent": [cfg.in_channels, *s.latent], "video_tokens": video_tokens(cfg, s.latent),
            "text_tokens": s.text_tokens, "flops": flops, **passes,
            "flops_source": "dancegrpo_hpc.perf.model.forward_flops; train step = forward x (3 + checkpoint_fraction)"}


def top_kernels(fn, device: torch.device, n: int) -> Dict:
    """torch.profiler over one call of fn: the n kernels (CUDA) or operators (CPU) with the
    most self time, with their share of the total and their call counts."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(((e.key, getattr(e, attr), e.count) for e in prof.key_averages()), key=lambda r: -r[1])
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows)
    return {"total_ms": total / 1e3, "unit": "kernel" if cuda else "operator",
            "top": [{"name": key[:160], "ms": us / 1e3, "share": us / total if total else 0.0, "calls": count}
                    for key, us, count in rows[:n]]}


__all__ = ["measure_dit", "model_config", "step_flops", "top_kernels", "video_tokens"]
