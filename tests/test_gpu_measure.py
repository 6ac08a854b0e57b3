"""tools/gpu_measure.py: the --smoke run on CPU (one in-process run shared by the tests;
timings are never asserted beyond being positive), the FLOP count against the
performance model, the sliding-tile correctness check, and the GPU defaults (gpu mark)."""

import contextlib
import io
import json
import os

import pytest
import torch

from dancegrpo_hpc.perf.model import forward_flops
from script_utils import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool():
    return load_script("tools/gpu_measure.py")


def run_tool(capsys, *argv):
    code = tool().main(list(argv))
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def smoke():
    """The CLI's JSON for --smoke on CPU, run in-process (a second interpreter would
    re-import torch and megatron-core: most of this file's time on a loaded machine)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = tool().main(["--smoke", "--json", "--device", "cpu"])
    assert code == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def timings(obj):
    """Every timing statistic ({median, min, max, all}) in the report."""
    if isinstance(obj, dict):
        if {"median", "min", "max", "all"} <= set(obj):
            yield obj
        for value in obj.values():
            yield from timings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from timings(value)


def test_smoke_report_is_well_formed(smoke):
    assert smoke["schema"] == "dancegrpo-gpu-measure/1" and smoke["smoke"] is True
    assert smoke["device"]["type"] == "cpu" and {"mfu", "kernels", "attention"} <= set(smoke)
    stats = list(timings(smoke))
    # DiT passes, copy, 4 ops x fused/eager, 2 passes x (dense, sliding-tile cached, sliding-tile first call), mask build
    assert len(stats) == 2 + 1 + 4 * 2 + 2 * 3 + 1
    for s in stats:
        assert len(s["all"]) == smoke["reps"] and all(t > 0 for t in s["all"]) and s["min"] <= s["median"] <= s["max"]
    for name in ("forward", "train_step"):
        p = smoke["mfu"][name]
        assert p["flops_per_s"] == pytest.approx(p["flops"] / p["seconds"]["median"])
        assert "mfu" not in p and p["peak_memory_bytes"] is None  # CPU: no peak to quote, no CUDA allocator
    k = smoke["kernels"]
    assert "error" not in k, k.get("error")
    moved = {"dance_step": 5, "flow_step": 5, "dance_log_prob": 3, "dance_log_prob_fwd_bwd": 7}
    assert {r["op"] for r in k["rows"]} == set(moved)
    for r in k["rows"]:
        assert r["bytes"] == moved[r["op"]] * k["numel"] * 4  # float32, each tensor read or written once
        assert r["fused_gbps"] == pytest.approx(r["bytes"] / r["fused_s"]["median"] / 1e9)
        assert r["speedup"] == pytest.approx(r["eager_s"]["median"] / r["fused_s"]["median"])
    a = smoke["attention"]
    assert a["sequence"] == 2 * 4 * 4 + 8 and 0 <= a["block_mask"]["sparsity"] < 1
    for name in ("forward", "forward_backward"):
        p = a[name]
        d, t, build = p["dense_s"]["median"], p["sliding_tile_s"]["median"], a["block_mask"]["build_s"]["median"]
        assert p["speedup"] == pytest.approx(d / t)
        assert p["speedup_amortised"] == pytest.approx(d / (t + build / 60)) and a["blocks_per_forward"] == 60
        assert p["speedup_build_every_call"] == pytest.approx(d / (t + build))


def test_flops_are_the_perf_model_count(smoke):
    from dancegrpo_hpc.models.hunyuan_video import PRESETS

    # the smoke model: the tiny preset with 1 dual + 1 single block; latent 2 x 4 x 4 at patch 1 x 2 x 2, 8 text tokens
    cfg = PRESETS["tiny"].replace(num_layers=1, num_single_layers=1)
    forward = forward_flops(cfg, 2 * 2 * 2, 8)["total"]
    m = smoke["mfu"]
    assert (m["video_tokens"], m["text_tokens"], m["batch"]) == (8, 8, 1)
    assert m["forward"]["flops"] == forward
    assert m["train_step"]["flops"] == 3 * forward  # forward + backward (2x), no checkpointing


def test_full_window_sliding_tile_equals_dense(smoke):
    c = smoke["attention"]["check"]
    assert c["window"] == [3, 3, 3]  # tiles (2, 2, 2): any tile's window covers the canvas
    assert c["tolerance"] == 1e-5 and c["ok"] and c["rel_err"] < 1e-5  # float32, same inputs


def test_check_distinguishes_a_local_window():
    """The check is not vacuous: with a 1-tile window sliding-tile differs from dense by far more than its tolerance."""
    from dancegrpo_hpc.attention import AttentionConfig, JointMask, attention
    from dancegrpo_hpc.perf.gpu_measure.attention import full_window

    grid, tile = (2, 4, 6), (1, 2, 2)
    mask = JointMask(48, 0, 5, None, grid)
    q, k, v = (torch.randn(1, mask.length, 2, 8) for _ in range(3))
    dense = attention(q, k, v, mask, AttentionConfig("sdpa"))

    def rel(window):
        out = attention(q, k, v, mask, AttentionConfig("sliding_tile", tile=tile, window=window))
        return ((out - dense).norm() / dense.norm()).item()

    assert full_window(grid, tile) == (3, 3, 5)
    assert rel(full_window(grid, tile)) < 1e-5
    assert rel((1, 1, 1)) > 1e-2


def test_block_sparsity_counts_blocks():
    from torch.nn.attention.flex_attention import create_block_mask

    from dancegrpo_hpc.perf.gpu_measure.attention import block_sparsity

    blocks = create_block_mask(lambda b, h, q, k: q >= k, B=1, H=1, Q_LEN=256, KV_LEN=256, device="cpu")
    s = block_sparsity(blocks)  # causal over 2 x 2 blocks of 128: 3 computed
    assert (s["blocks_computed"], s["blocks_total"], s["sparsity"]) == (3, 4, 0.25)


def test_bad_part_exits_2(capsys):
    code, out = run_tool(capsys, "--smoke", "--only", "mfu,bogus", "--device", "cpu")
    assert code == 2 and "part must be one of" in out.err


@pytest.mark.gpu
def test_defaults_on_cuda():
    """The issue's sizes on the GPU, briefly (1 warm-up, 2 timed calls)."""
    from dancegrpo_hpc.perf.gpu_measure import PARTS, Sizes, run

    r = run(Sizes(warmup=1, reps=2), PARTS, torch.device("cuda"))
    json.dumps(r)
    m, k, a = r["mfu"], r["kernels"], r["attention"]
    assert m["video_tokens"] == 14 * 30 * 30 and m["model"]["hidden_size"] == 3072
    assert m["train_step"]["peak_memory_bytes"] > 0
    assert "error" not in k, k.get("error")
    assert a["sequence"] == 30 * 48 * 80 + 256 and a["check"]["ok"], a["check"]
    # 900 video query blocks (3 per 384-token tile) each see 27 tiles x 3 blocks + 2 text blocks; the 2 text
    # query blocks see all 902: one mask for all heads (equal windows) and the batch (no text padding)
    b = a["block_mask"]
    assert (b["blocks_computed"], b["blocks_total"], b["mask_batch_heads"]) == (900 * 83 + 2 * 902, 902 ** 2, [1, 1])
    if r["device"].get("hardware"):  # an H100 / H800 / H200 SXM: fractions of its peaks
        assert 0 < m["train_step"]["mfu"] < 1 and 0 < m["forward"]["mfu"] < 1
        assert all(0 < row["hbm_fraction"] < 1.1 for row in k["rows"])


@pytest.fixture(scope="module")
def fp8_smoke():
    """The fp8 part at SMOKE sizes on CPU (torch._scaled_mm's CPU kernel), in-process."""
    from dancegrpo_hpc.perf.gpu_measure import SMOKE, format_report, run

    report = run(SMOKE, ["fp8"], torch.device("cpu"), smoke=True)
    return report, format_report(report)


def test_fp8_part_reports_speedups_and_errors(fp8_smoke):
    """Speed-ups are bf16 / variant of the reported medians; the DiT's FP8 output and gradients
    are near bf16 (same weights) but not equal; timings are never asserted."""
    from dancegrpo_hpc.models.hunyuan_video import PRESETS
    from dancegrpo_hpc.perf.gpu_measure.fp8 import RECIPES, gemm_shapes

    report, text = fp8_smoke
    json.dumps(report)
    r = report["fp8"]
    assert r["recipes"] == list(RECIPES)
    g = r["gemms"]
    assert g["tokens"] == 8 + 8  # 2 x 4 x 4 latent at patch 1 x 2 x 2, 8 text tokens
    assert [row["shape"][1:] for row in g["rows"]] == [[k, n] for _, k, n in gemm_shapes(PRESETS["tiny"])]
    assert [row["shape"][1:] for row in g["rows"]][4] == [64, 3 * 64 + 256]  # single block qkv + mlp
    for row in g["rows"]:
        base = row["bf16"]
        for recipe in RECIPES:
            v = row[recipe]
            assert v["forward_speedup"] == pytest.approx(base["forward_s"]["median"] / v["forward_s"]["median"])
            assert v["forward_backward_speedup"] == pytest.approx(
                base["forward_backward_s"]["median"] / v["forward_backward_s"]["median"])
    d = r["dit"]
    assert d["compile"] is False and list(d["variants"]) == ["bf16", *RECIPES]
    for recipe in RECIPES:
        v = d["variants"][recipe]
        assert 1e-4 < v["out_rel_err"] < 0.05 and 1e-4 < v["grad_rel_err"] < 0.1, v
        for name in ("forward", "train_step"):
            assert v[name]["speedup"] == pytest.approx(d["variants"]["bf16"][name]["seconds"]["median"]
                                                       / v[name]["seconds"]["median"])
    assert "FP8 (torch._scaled_mm) vs bf16 GEMMs" in text and "rel err vs bf16" in text
