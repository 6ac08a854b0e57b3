"""FP8 (the local layer spec's torch._scaled_mm linears, distributed/fp8.py) against bf16:

  gemms   each block linear's shape at the DiT's token count (video + text, batch 1):
          F.linear in bf16, each recipe's fp8_linear (quantization included), forward and
          forward + backward, and the bare FP8 GEMM on pre-quantized operands (the ceiling);
          speed-ups against bf16.
  dit     the DiT train step (forward + backward) and the no-grad forward at the `mfu`
          part's size, in bf16 and in each recipe (same weights), optionally with regional
          torch.compile (block.compile() on every dual and single block); speed-ups, and the
          FP8 output's and parameter gradients' relative L2 error against bf16.

Runs on CPU at SMOKE sizes (the tiny preset: every linear a multiple of 16). Timings are
reported, never asserted.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F

from .common import Sizes, peak_memory, reset_peak_memory, time_calls

RECIPES = ("current", "delayed", "rowwise")


def gemm_shapes(cfg):
    """(name, in, out) of the DiT's block linears (hidden d, MLP m)."""
    d, m = cfg.hidden_size, cfg.mlp_hidden
    return [("qkv", d, 3 * d), ("attention out", d, d), ("mlp in", d, m), ("mlp out", m, d),
            ("single qkv+mlp", d, 3 * d + m), ("single out", d + m, d)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def measure_gemms(tokens: int, cfg, s: Sizes, device: torch.device, recipes: Iterable[str]) -> Dict:
    from ...distributed.fp8 import E4M3, FP8State, amax, fp8_linear, pow2_scale, quantize

    dtype, rows = torch.bfloat16, []
    gen = torch.Generator(device).manual_seed(0)
    totals: Dict[str, float] = {}
    for name, k, n in gemm_shapes(cfg):
        x = torch.randn(tokens, k, generator=gen, device=device, dtype=dtype)
        w = (torch.randn(n, k, generator=gen, device=device) / k ** 0.5).to(dtype)
        b = torch.zeros(n, device=device, dtype=dtype)
        g = torch.randn(tokens, n, generator=gen, device=device, dtype=dtype)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]

        def fwd(fn):
            def call():
                with torch.no_grad():
                    fn(x, w, b)
            return call

        def fwd_bwd(fn):
            def call():
                for t in leaves:
                    t.grad = None
                fn(*leaves).backward(g)
            return call

        variants = {"bf16": F.linear}
        for r in recipes:
            state = FP8State(r).to(device)
            variants[r] = lambda a, bw, bb, state=state: fp8_linear(a, bw, bb, state)
        row = {"name": name, "shape": [tokens, k, n]}
        for label, fn in variants.items():
            row[label] = {"forward_s": time_calls(fwd(fn), device, s.warmup, s.reps),
                          "forward_backward_s": time_calls(fwd_bwd(fn), device, s.warmup, s.reps)}
        xs, ws = pow2_scale(amax(x), E4M3), pow2_scale(amax(w), E4M3)
        xq, wq = quantize(x, xs, E4M3), quantize(w, ws, E4M3)
        one = torch.ones((), device=device)
        row["fp8_gemm_only_s"] = time_calls(lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one,
                                                                     out_dtype=dtype), device, s.warmup, s.reps)
        base = row["bf16"]
        for label in list(variants)[1:]:
            v = row[label]
            v["forward_speedup"] = base["forward_s"]["median"] / v["forward_s"]["median"]
            v["forward_backward_speedup"] = base["forward_backward_s"]["median"] / v["forward_backward_s"]["median"]
        row["fp8_gemm_only_speedup"] = base["forward_s"]["median"] / row["fp8_gemm_only_s"]["median"]
        for label in variants:
            for pass_ in ("forward_s", "forward_backward_s"):
                key = f"{label}.{pass_}"
                totals[key] = totals.get(key, 0.0) + row[label][pass_]["median"]
        totals["fp8_gemm_only_s"] = totals.get("fp8_gemm_only_s", 0.0) + row["fp8_gemm_only_s"]["median"]
        rows.append(row)
    return {"tokens": tokens, "dtype": "bfloat16", "rows": rows, "total_median_s": totals}


def _build(cfg, s: Sizes, device, spec, state, compile: bool):
    from ...attention import AttentionConfig
    from ...models.hunyuan_video import HunyuanVideoDiT

    model = HunyuanVideoDiT(cfg, attention=AttentionConfig(s.backend), dtype=torch.bfloat16, device=device, spec=spec,
                            checkpoint_fraction=s.checkpoint_fraction, init_weights=state is None)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("fp8_state" in k for k in missing), (missing[:3], unexpected[:3])
    if compile:
        for block in (*model.transformer_blocks, *model.single_transformer_blocks):
            block.compile()
    return model


def measure_dit_fp8(s: Sizes, device: torch.device, facts: Dict, recipes: Iterable[str], compile: bool) -> Dict:
    import torch.distributed as dist

    from ...distributed import parallel
    from ...models.hunyuan_video import LayerSpec
    from .dit import _inputs, model_config, step_flops, video_tokens

    cfg, dtype = model_config(s), torch.bfloat16
    owns_dist = not dist.is_initialized()
    out: Dict = {"compile": compile, "variants": {}}
    try:
        torch.manual_seed(0)
        inputs = _inputs(cfg, s, device, dtype)
        grad = torch.randn(s.batch, cfg.out_channels, *s.latent, device=device, dtype=dtype)
        flops = step_flops(cfg, s)
        state, ref_out, ref_grads = None, None, None
        for label in ("bf16", *recipes):
            spec = LayerSpec() if label == "bf16" else LayerSpec("local", fp8=label)
            model = _build(cfg, s, device, spec, state, compile)
            if state is None:
                state = {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}

            def forward():
                with torch.no_grad():
                    return model(**inputs)

            def train_step():
                model.zero_grad(set_to_none=True)
                result = model(**inputs)
                result.backward(grad)
                return result

            start = time.perf_counter()
            first = train_step()  # compiles (when asked) and gives the output and gradients compared
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row = {"first_step_s": time.perf_counter() - start}
            grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
            if label == "bf16":
                ref_out, ref_grads = first.detach(), grads
            else:
                num = sum(float((grads[k].float() - g.float()).square().sum()) for k, g in ref_grads.items())
                den = sum(float(g.float().square().sum()) for g in ref_grads.values())
                row.update(out_rel_err=_rel(first.detach(), ref_out), grad_rel_err=(num / den) ** 0.5)
            del first, grads
            for name, fn, key in (("forward", forward, "forward"), ("train_step", train_step, "train_step")):
                reset_peak_memory(device)
                seconds = time_calls(fn, device, s.warmup, s.reps)
                row[name] = {"seconds": seconds, "flops_per_s": flops[key] / seconds["median"],
                             "peak_memory_bytes": peak_memory(device)}
                if facts.get("peak_bf16_flops_s"):  # MFU against the bf16 peak, as the mfu part quotes it
                    row[name]["mfu_bf16_peak"] = row[name]["flops_per_s"] / facts["peak_bf16_flops_s"]
            if label != "bf16":
                for name in ("forward", "train_step"):
                    base = out["variants"]["bf16"][name]["seconds"]["median"]
                    row[name]["speedup"] = base / row[name]["seconds"]["median"]
            out["variants"][label] = row
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if owns_dist:
            parallel.destroy()
    out.update(hidden_size=cfg.hidden_size, dual_blocks=s.layers, single_blocks=s.single_layers, batch=s.batch,
               video_tokens=video_tokens(cfg, s.latent), text_tokens=s.text_tokens, flops=flops)
    return out


def measure_fp8(s: Sizes, device: torch.device, facts: Dict, compile: Optional[bool] = None,
                recipes: Iterable[str] = RECIPES) -> Dict:
    """Both measurements; compile defaults to the sizes' `compile` flag where it has one."""
    from ...distributed.fp8 import fp8_supported
    from .dit import model_config, video_tokens

    compile = bool(getattr(s, "compile", False)) if compile is None else compile
    recipes = tuple(recipes)
    if not fp8_supported(device):
        return {"error": f"FP8 not measured: torch._scaled_mm needs compute capability >= 8.9; "
                         f"this GPU has {torch.cuda.get_device_capability(device)}"}
    cfg = model_config(s)
    tokens = s.batch * (video_tokens(cfg, s.latent) + s.text_tokens)
    return {"recipes": list(recipes), "gemms": measure_gemms(tokens, cfg, s, device, recipes),
            "dit": measure_dit_fp8(s, device, facts, recipes, compile)}


def format_fp8(r: Dict) -> list:
    if "error" in r:
        return ["", r["error"]]
    g, d = r["gemms"], r["dit"]
    lines = ["", f"FP8 (torch._scaled_mm) vs bf16 GEMMs, {g['tokens']} tokens, median ms; speed-up = bf16 / variant"]
    head = ("  " + f"{'linear (K -> N)':<30}" + "".join(f"{v:>22}" for v in ("bf16", *r["recipes"]))
            + f"{'fp8 GEMM only':>16}")
    lines.append(head + "   [forward | forward+backward]")
    for row in g["rows"]:
        _, k, n = row["shape"]
        base = row["bf16"]
        cells = [f"{base['forward_s']['median'] * 1e3:8.3f} |{base['forward_backward_s']['median'] * 1e3:8.3f}"]
        for v in r["recipes"]:
            x = row[v]
            cells.append(f"{x['forward_speedup']:5.2f}x |{x['forward_backward_speedup']:5.2f}x")
        lines.append(f"  {row['name'] + f' ({k} -> {n})':<30}" + "".join(f"{c:>22}" for c in cells)
                     + f"{row['fp8_gemm_only_s']['median'] * 1e3:9.3f} {row['fp8_gemm_only_speedup']:4.2f}x")
    lines.append(f"DiT step, width {d['hidden_size']}, {d['dual_blocks']} dual + {d['single_blocks']} single blocks, "
                 f"{d['video_tokens']} video + {d['text_tokens']} text tokens"
                 + (", regional torch.compile" if d["compile"] else ", eager"))
    for label, row in d["variants"].items():
        f, t = row["forward"], row["train_step"]
        text = (f"  {label:<8} forward {f['seconds']['median'] * 1e3:9.2f} ms  train step "
                f"{t['seconds']['median'] * 1e3:9.2f} ms  first step {row['first_step_s']:.1f} s")
        if label != "bf16":
            text += (f"  speed-up {f['speedup']:.2f}x / {t['speedup']:.2f}x  rel err vs bf16: out "
                     f"{row['out_rel_err']:.2e}, grads {row['grad_rel_err']:.2e}")
        lines.append(text)
    return lines


__all__ = ["RECIPES", "format_fp8", "gemm_shapes", "measure_dit_fp8", "measure_fp8", "measure_gemms"]
