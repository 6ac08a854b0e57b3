"""The analytic performance model (dancegrpo_hpc/perf, tools/perf_model.py): the DiT
FLOP count against torch's FlopCounterMode, how the communication volumes scale,
calibration round trips, the CLI contract and one-line errors on bad input."""

import json
import os
import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.config import load_config
from dancegrpo_hpc.memory import estimate_memory
from dancegrpo_hpc.perf import (HARDWARE, Assumptions, calibrate, dp_bytes_per_step, estimate, forward_flops,
                                hardware, tp_bytes_per_forward, ulysses_bytes_per_forward)
from script_utils import load_script

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from dancegrpo_hpc.models.hunyuan_video.config import preset
    from dancegrpo_hpc.models.hunyuan_video.model import HunyuanVideoDiT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "hunyuan_t2v_64gpu.yaml")
TOY = os.path.join(ROOT, "examples", "toy_t2v.yaml")
BENCH = ["rollout.prompts_per_iteration=2", "rollout.group_size=8"]  # tools/bench_train.py's defaults


def _tool():
    return load_script("tools/perf_model.py")


def _example(*overrides):
    return load_config(EXAMPLE, list(overrides), paths=False)


FLASH = "model.attention=flash"  # the backend of the calibration's entry (the example now says sdpa)


def _measured_flops(cfg, batch, frames, height, width, text):
    torch.manual_seed(0)
    model = HunyuanVideoDiT(cfg).eval()
    x = torch.randn(batch, cfg.in_channels, frames, height, width)
    kwargs = dict(timestep=torch.full((batch,), 500.0),
                  encoder_hidden_states=torch.randn(batch, text, cfg.text_embed_dim),
                  pooled_projections=torch.randn(batch, cfg.pooled_projection_dim),
                  guidance=torch.full((batch,), 6000.0) if cfg.guidance_embeds else None)
    # the math SDPA backend runs attention as bmm, which FlopCounterMode counts (CPU's fused kernel it does not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, **kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("name,batch,grid,text", [
    ("tiny", 1, (3, 8, 6), 7),
    ("tiny", 2, (2, 12, 12), 5),  # attention a larger share
    ("tiny-i2v-token-replace", 1, (3, 8, 6), 7),  # extra AdaLN for the clean first frame
])
def test_forward_flops_match_flop_counter(name, batch, grid, text):
    cfg = preset(name)
    frames, height, width = grid
    video = frames * (height // cfg.patch_size) * (width // cfg.patch_size)
    predicted = forward_flops(cfg, video, text)
    measured = _measured_flops(cfg, batch, frames, height, width, text)
    assert abs(batch * predicted["total"] - measured) / measured < 0.02, (batch * predicted["total"], measured)
    assert predicted["total"] == predicted["linear"] + predicted["attention"]


def test_attention_flops_are_4_L2_d_per_layer():
    cfg = preset("hunyuan-t2v-13b")
    a, b = forward_flops(cfg, 1000, 256), forward_flops(cfg, 3000, 256)
    layers = cfg.num_layers + cfg.num_single_layers
    refiner = cfg.num_refiner_layers * 4 * 256 ** 2 * cfg.hidden_size
    assert a["attention"] == layers * 4 * 1256 ** 2 * cfg.hidden_size + refiner
    assert (b["attention"] - refiner) / (a["attention"] - refiner) == pytest.approx((3256 / 1256) ** 2)


def test_13b_forward_flops_scale():
    """12,856 tokens through the 12.8B-parameter DiT: only about 6.8B parameters act on each
    token (a dual-stream block's video and text weights see different tokens; the AdaLN
    linears, 3.4B, act once per sample), so the linears cost about 0.53 x 2 x params x
    tokens; attention adds 4 L^2 d per layer, about 41% of the forward."""
    cfg = preset("hunyuan-t2v-13b")
    f = forward_flops(cfg, 12600, 256)
    assert 0.52 < f["linear"] / (2 * 12.82e9 * 12856) < 0.55
    assert 0.35 < f["attention"] / f["total"] < 0.45


def test_communication_volume_scaling():
    cfg = preset("hunyuan-t2v-13b")
    tp = tp_bytes_per_forward(cfg, 10000, 256, tp=2, ulysses=4, element=2)
    assert tp_bytes_per_forward(cfg, 20000, 512, tp=2, ulysses=4, element=2) == pytest.approx(2 * tp)
    assert tp_bytes_per_forward(cfg, 10000, 256, tp=2, ulysses=4, element=4) == pytest.approx(2 * tp)  # fp32
    # ring factor (t - 1) / t
    assert tp_bytes_per_forward(cfg, 10000, 256, tp=4, ulysses=4, element=2) == pytest.approx(1.5 * tp)
    assert tp_bytes_per_forward(cfg, 10000, 256, tp=1, ulysses=4, element=2) == 0
    ul = ulysses_bytes_per_forward(cfg, 10000, tp=2, ulysses=4, element=2)
    assert ulysses_bytes_per_forward(cfg, 20000, tp=2, ulysses=4, element=2) == pytest.approx(2 * ul)
    assert ulysses_bytes_per_forward(cfg, 10000, tp=4, ulysses=4, element=2) == pytest.approx(ul / 2)  # d / t
    assert ulysses_bytes_per_forward(cfg, 10000, tp=2, ulysses=1, element=2) == 0
    assert dp_bytes_per_step(10 ** 9, 32, 2) == pytest.approx(2 * 31 / 32 * 2e9)
    assert dp_bytes_per_step(10 ** 9, 1, 2) == 0


def test_estimate_tokens_move_tp_and_ulysses_not_dp():
    hw = hardware("h800")
    small = estimate(_example(), 64, hw)
    big = estimate(_example("data.height=960"), 64, hw)  # twice the video tokens
    ratio = (big["inputs"]["tokens_padded"]) / small["inputs"]["tokens_padded"]
    assert 1.9 < ratio < 2.0
    for key in ("tp_rollout", "ulysses_rollout", "tp_train", "ulysses_train"):
        assert 1.9 < big["comm_bytes_per_gpu"][key] / small["comm_bytes_per_gpu"][key] <= ratio + 1e-9
    assert big["comm_bytes_per_gpu"]["dp"] == small["comm_bytes_per_gpu"]["dp"] > 0
    assert big["time_s"]["rollout_compute"] > 2 * small["time_s"]["rollout_compute"]  # attention is quadratic


def test_h800_differs_from_h100_only_in_nvlink_time():
    h800, h100 = (estimate(_example(), 64, hardware(name)) for name in ("h800", "h100"))
    assert h800["time_s"]["rollout_compute"] == h100["time_s"]["rollout_compute"]
    assert h800["comm_bytes_per_gpu"] == h100["comm_bytes_per_gpu"]
    assert h800["time_s"]["rollout_comm"] == pytest.approx(h100["time_s"]["rollout_comm"] * 900 / 400)
    assert h800["time_s"]["dp_grad_sync"] == h100["time_s"]["dp_grad_sync"]  # InfiniBand across nodes
    assert h800["links"]["dp"]["link"] == "InfiniBand" and h800["links"]["tp"]["link"] == "NVLink"


def test_estimate_work_and_memory_of_the_64gpu_example():
    r = estimate(_example(), 64, hardware("h800"))
    i = r["inputs"]
    assert (i["tensor"], i["ulysses"], i["data"]) == (2, 4, 8)
    assert (i["video_tokens"], i["text_tokens"], i["trained_timesteps"]) == (12600, 256, 9)
    assert (i["local_samples"], i["kept_samples"]) == (96, 32)  # 4 prompts x 24; best 8 of 24
    fwd = r["flops"]["forward_per_sample"]
    assert r["flops"]["rollout_per_gpu"] == pytest.approx(96 * 16 * fwd / 8)
    assert r["flops"]["train_per_gpu"] == pytest.approx(32 * 9 * 4 * fwd / 8)  # fwd + bwd + full recompute
    t = r["time_s"]
    assert t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"))
    assert r["memory_bytes"] == estimate_memory(_example(), 64)
    assert r["memory_fits"]


def test_comm_overlap_hides_tp_and_ulysses_time():
    base = estimate(_example(), 64, hardware("h800"))
    hidden = estimate(_example(), 64, hardware("h800"), Assumptions(comm_overlap=1.0))
    assert hidden["time_s"]["rollout_comm"] == 0 and hidden["time_s"]["train_comm"] == 0
    assert hidden["time_s"]["dp_grad_sync"] == base["time_s"]["dp_grad_sync"]


def test_calibration_round_trip():
    """Predicting the measured toy run at its own calibrated rates gives back the measurement."""
    bench = load_config(TOY, BENCH, paths=False)
    measured = {"rollout_batched_sps": 14.0, "rollout_sequential_sps": 5.8, "train_step_s": 2.05}
    cal = calibrate(bench, measured, hw=hardware("h100"))
    fwd = cal["forward_flops_per_sample"]
    assert cal["rollout_flops_s"] == pytest.approx(14.0 * 10 * fwd)  # 10 sampling steps per sample
    assert cal["train_flops_s"] == pytest.approx(16 * 6 * 3 * fwd / 2.05)  # 16 samples x 6 timesteps, no recompute
    assert cal["mfu"]["rollout"] == pytest.approx(cal["rollout_flops_s"] / HARDWARE["h100"].tf32_flops)
    r = estimate(bench, 1, hardware("h100"), rates={"rollout": cal["rollout_flops_s"], "train": cal["train_flops_s"]})
    assert r["time_s"]["rollout_compute"] == pytest.approx(16 / 14.0)
    assert r["time_s"]["train_compute"] == pytest.approx(2.05)


@pytest.mark.parametrize("overrides,world,message", [
    (["parallel.tensor=2", "parallel.ulysses=5"], 40, "must divide the 24 attention heads"),
    ([], 60, "is not divisible by parallel.tensor x parallel.ulysses"),
    (["parallel.tensor=1", "parallel.ulysses=1", "parallel.sequence_parallel=false"], 64,
     "must divide by the data-parallel size 64"),
])
def test_bad_layout_is_one_line_input_error(overrides, world, message):
    with pytest.raises(InputError, match=message) as exc:
        estimate(_example(*overrides), world, hardware("h800"))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("kwargs,message", [
    (dict(rollout_mfu=1.5), "rollout_mfu must lie in"),
    (dict(comm_efficiency=0), "comm_efficiency must lie in"),
    (dict(comm_overlap=-0.1), "comm_overlap must lie in"),
    (dict(decode_s=-1.0), "decode_s must be"),
])
def test_bad_assumptions_are_one_line_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        estimate(_example(), 64, hardware("h800"), Assumptions(**kwargs))


def test_bad_hardware_and_measurement():
    with pytest.raises(InputError, match="unknown hardware 'a100'; choose one of h100, h200, h800"):
        hardware("a100")
    with pytest.raises(InputError, match="lacks train_step_s .*keys found: rollout_batched_sps"):
        calibrate(load_config(TOY, BENCH, paths=False), {"rollout_batched_sps": 3.0})


def test_tool_json_and_explicit_args_agree(capsys):
    tool = _tool()
    assert tool.main([EXAMPLE, "--world-size", "64", "--json"]) == 0
    from_yaml = json.loads(capsys.readouterr().out)["estimate"]
    assert from_yaml["inputs"]["world_size"] == 64 and from_yaml["time_s"]["total"] > 0
    explicit = ["--preset", "hunyuan-t2v-13b", "--frames", "53", "--height", "480", "--width", "480", "--steps", "16",
                "--prompts", "32", "--group-size", "24", "--tau", "0.6", "--tp", "2", "--ulysses", "4",
                "--best-of-n", "8", "--updates", "2", "--world-size", "64", "--json"]
    assert tool.main(explicit + ["parallel.sequence_parallel=true", "rollout.micro_batch=8"]) == 0
    from_args = json.loads(capsys.readouterr().out)["estimate"]
    assert from_args["time_s"] == pytest.approx(from_yaml["time_s"])
    assert from_args["comm_bytes_per_gpu"] == pytest.approx(from_yaml["comm_bytes_per_gpu"])


def test_tool_table_and_errors(capsys, tmp_path):
    tool = _tool()
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rollout_batched_sps": 14.0, "train_step_s": 2.05}) + "\n")
    assert tool.main([EXAMPLE, "--world-size", "64", "--calibrate", str(bench)]) == 0
    out = capsys.readouterr().out
    assert "calibration:" in out and "prediction at the calibrated rates" in out and "gradient sync" in out
    assert tool.main([EXAMPLE, "--world-size", "64", "parallel.ulysses=5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perf_model: ") and err.count("\n") == 1
    assert tool.main(["--world-size", "8"]) == 2
    assert "give a trainer config" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# calibration from GPU measurements (examples/calibration/h200_2026-12-04.json), overlap, world size

H200_PEAK, H200_HBM, H800_HBM = 989.4e12, 4800e9, 3350e9
RUN2 = "2026-12-04 run 2: eager, flash attention"


def _calibration(entry=RUN2):
    from dancegrpo_hpc.perf.calibration import load_calibration

    return load_calibration(entry=entry)


def _measured_dit_flops():
    """Forward FLOPs of the measured DiT: the 13B width with 2 dual + 4 single blocks, 12,600 + 256 tokens."""
    return forward_flops(preset("hunyuan-t2v-13b").replace(num_layers=2, num_single_layers=4), 12600, 256)


def test_calibration_file_turns_measurements_into_efficiencies():
    cal = _calibration()
    assert cal.device == "h200"
    assert cal.gemm_forward_mfu == pytest.approx(798.8e12 / H200_PEAK)
    assert cal.gemm_backward_mfu == pytest.approx(750.5e12 / H200_PEAK)
    assert cal.attention("flash", "forward") == pytest.approx(362e12 / H200_PEAK)
    assert cal.attention("sdpa", "forward_backward") == pytest.approx(552e12 / H200_PEAK)  # sdpa -> cuDNN
    f = _measured_dit_flops()
    lin, att = f["linear"], f["attention"]
    assert cal.dit["forward_mfu"] == pytest.approx((lin + att) / 0.075 / H200_PEAK)  # issue: 40.2%
    assert round(cal.dit["forward_mfu"], 3) == 0.401 and round(cal.dit["train_step_mfu"], 3) == 0.363
    # the rest of a pass: measured time - GEMMs - attention, as H200 HBM bytes per linear FLOP
    rest_fwd = 0.075 - lin / 798.8e12 - att / 362e12
    rest_train = 0.2488 - (lin / 798.8e12 + 2 * lin / 750.5e12) - 3.5 * att / 319e12
    assert cal.rest_forward_bytes_per_flop == pytest.approx(rest_fwd * H200_HBM / lin)
    assert cal.rest_train_bytes_per_flop == pytest.approx(rest_train * H200_HBM / lin)
    assert cal.hbm_fraction["sde_step"] == pytest.approx(0.727, abs=1e-3)  # 3491 GB/s of 4.8 TB/s
    # another entry keeps its own DiT times over the same kernel figures (base chain)
    first = _calibration("2026-12-04 run 1 (851646f): eager, flash attention")
    assert round(first.dit["forward_mfu"], 3) == 0.406 and round(first.dit["train_step_mfu"], 3) == 0.367
    assert first.gemm_forward_mfu == cal.gemm_forward_mfu


def test_calibrated_estimate_is_the_closed_form_per_part():
    cal = _calibration()
    r = estimate(_example(FLASH), 64, hardware("h800"), calibration=cal)
    fwd, n = r["flops"]["forward_per_sample"], 96 * 16  # rollout forwards of a data rank, split over its 8 GPUs
    lin = r["flops"]["rollout_per_gpu"] * (1 - r["flops"]["attention_share"])
    att = r["flops"]["rollout_per_gpu"] * r["flops"]["attention_share"]
    assert lin + att == pytest.approx(n * fwd / 8)
    split = r["compute_split_s"]["rollout"]
    assert split["gemm"] == pytest.approx(lin / (cal.gemm_forward_mfu * 989.4e12))
    assert split["attention"] == pytest.approx(att / (362e12 / H200_PEAK * 989.4e12))  # flash, the example's backend
    assert split["rest"] == pytest.approx(lin * cal.rest_forward_bytes_per_flop / H800_HBM)
    assert r["time_s"]["rollout_compute"] == pytest.approx(sum(split.values()))
    # training: forward + backward (GEMM bwd 2x, attention 3.5x forward FLOPs) + a full recompute forward
    tl, ta = lin * 32 * 9 / n, att * 32 * 9 / n  # one forward of each of the 32 x 9 trained pairs, per GPU
    t = r["compute_split_s"]["train"]
    assert t["gemm"] == pytest.approx(2 * tl / (cal.gemm_forward_mfu * 989.4e12) + 2 * tl / (cal.gemm_backward_mfu * 989.4e12))
    assert t["attention"] == pytest.approx(3.5 * ta / 319e12 + ta / 362e12)
    assert t["rest"] == pytest.approx(tl * (cal.rest_train_bytes_per_flop + cal.rest_forward_bytes_per_flop) / H800_HBM)


def test_calibration_carries_compute_over_and_scales_memory_bound_parts_with_hbm():
    cal = _calibration()
    h800, h200 = (estimate(_example(), 64, hardware(name), calibration=cal) for name in ("h800", "h200"))
    for stage in ("rollout", "train"):
        a, b = h800["compute_split_s"][stage], h200["compute_split_s"][stage]
        assert a["gemm"] == b["gemm"] and a["attention"] == b["attention"]  # same Tensor Core peaks
        assert a["rest"] == pytest.approx(b["rest"] * 4800 / 3350)  # HBM 4.8 vs 3.35 TB/s
    assert h800["time_s"]["sde_steps"] == pytest.approx(h200["time_s"]["sde_steps"] * 4800 / 3350)
    # SDE steps: 96 samples x 16 steps x 16 x 14 x 60 x 60 float32 x 5 tensors at 3491 GB/s x 3.35 / 4.8
    assert h800["time_s"]["sde_steps"] == pytest.approx(96 * 16 * 16 * 14 * 60 * 60 * 20 / (3491e9 * 3350 / 4800))


def test_a_calibration_at_uniform_efficiency_reproduces_peak_times_mfu():
    """GEMM and attention at 45% and no rest: the calibrated rollout equals the uncalibrated
    one at rollout_mfu 0.45; halving the attention MFU adds exactly the attention time again."""
    import dataclasses

    cal = dataclasses.replace(_calibration(), gemm_forward_mfu=0.45, attention_mfu={"flash": {"forward": 0.45,
                              "forward_backward": 0.45}}, rest_forward_bytes_per_flop=0.0)
    plain = estimate(_example(FLASH), 64, hardware("h800"), Assumptions(rollout_mfu=0.45))
    calibrated = estimate(_example(FLASH), 64, hardware("h800"), calibration=cal)
    assert calibrated["time_s"]["rollout_compute"] == pytest.approx(plain["time_s"]["rollout_compute"])
    slower = dataclasses.replace(cal, attention_mfu={"flash": {"forward": 0.225, "forward_backward": 0.45}})
    again = estimate(_example(FLASH), 64, hardware("h800"), calibration=slower)
    attention = calibrated["compute_split_s"]["rollout"]["attention"]
    assert again["time_s"]["rollout_compute"] == pytest.approx(calibrated["time_s"]["rollout_compute"] + attention)


def test_sliding_tile_density_counts_flex_blocks():
    from dancegrpo_hpc.perf.calibration import sliding_tile_density

    # 30 x 48 x 80 in 6 x 8 x 8 tiles (384 tokens = 3 blocks of 128): 900 video query blocks see
    # 27 tiles x 3 blocks + 2 text blocks, the 2 text query blocks all 902 blocks
    assert sliding_tile_density((30, 48, 80), (6, 8, 8), (3, 3, 3), 256) == pytest.approx(
        (900 * 83 + 2 * 902) / 902 ** 2)
    # a window covering every tile computes every block
    assert sliding_tile_density((4, 8, 8), (2, 4, 4), (3, 3, 3), 64) == 1.0
    with pytest.raises(InputError, match=r"grid \(14, 30, 30\) must be divisible by the tile size \(6, 8, 8\)"):
        sliding_tile_density((14, 30, 30), (6, 8, 8), (3, 3, 3), 256)


def test_sliding_tile_in_the_rollout_divides_attention_by_its_speedup():
    cal = _calibration()
    s = cal.sliding_tile
    # at the measured shape the calibrated MFUs give back the measured speed-ups over dense cuDNN
    assert s.measured["density"] * s.measured["dense_forward_mfu"] / s.forward_mfu == pytest.approx(78.2 / 264.7)
    assert s.measured["speedup_forward_backward"] == pytest.approx(1026.8 / 194.7)
    dense = estimate(_example(FLASH), 64, hardware("h800"), calibration=cal)
    sta = estimate(_example(FLASH), 64, hardware("h800"),
                   Assumptions(rollout_attention="sliding_tile", sta_tile=(2, 6, 6)),
                   calibration=cal)
    density = sta["attention"]["rollout"]["density"]
    assert sta["attention"]["train"]["backend"] == "flash"  # training keeps the config's attention
    factor = (362e12 / H200_PEAK) / s.forward_mfu * density  # sliding-tile time / flash time
    assert sta["compute_split_s"]["rollout"]["attention"] == pytest.approx(
        dense["compute_split_s"]["rollout"]["attention"] * factor)
    assert sta["compute_split_s"]["train"] == dense["compute_split_s"]["train"]
    assert sta["time_s"]["sta_mask"] == pytest.approx(0.0337 * (12856 / 115456) ** 2)  # one build per iteration
    fixed = estimate(_example(FLASH), 64, hardware("h800"),
                     Assumptions(rollout_attention="sliding_tile", sta_speedup=3.38),
                     calibration=cal)  # the measured speed-up over dense sdpa (cuDNN)
    assert fixed["compute_split_s"]["rollout"]["attention"] == pytest.approx(
        dense["compute_split_s"]["rollout"]["attention"] * (362 / 625) / 3.38)
    with pytest.raises(InputError, match="must be divisible by the tile size"):
        estimate(_example(), 64, hardware("h800"), Assumptions(rollout_attention="sliding_tile"), calibration=cal)


def test_overlap_and_decode_placement_assumptions():
    hw = hardware("h800")
    engine = estimate(_example(), 64, hw)
    t, h = engine["time_s"], engine["hidden_s"]
    # the engine splits the data rank's 96 videos over the group's 8 GPUs (rl/reward_split.py) and decodes
    # them on the sampling thread
    assert t["decode"] == pytest.approx(96 / 8 * 3.0) and h["decode"] == 0
    # rewards are scored while the next of the 12 micro-batches samples: only the last one's are exposed
    assert t["reward"] == pytest.approx(96 / 8 * 0.25 / 12) and h["reward"] == pytest.approx(96 / 8 * 0.25 * 11 / 12)
    replicated = estimate(_example(), 64, hw, Assumptions(split_decode=False))  # every GPU decodes all 96
    assert replicated["time_s"]["decode"] == pytest.approx(96 * 3.0)
    assert replicated["time_s"]["reward"] == pytest.approx(96 * 0.25 / 12)
    hidden = estimate(_example(), 64, hw, Assumptions(decode_overlap=1.0, reward_overlap=1.0))
    assert hidden["time_s"]["decode"] == 0 and hidden["time_s"]["reward"] == 0
    # overlap hides at most the sampling time
    huge = estimate(_example(), 64, hw, Assumptions(decode_s=100.0, decode_overlap=1.0, reward_overlap=0.0))
    sampling = huge["time_s"]["rollout_compute"] + huge["time_s"]["rollout_comm"]
    assert huge["hidden_s"]["decode"] == pytest.approx(sampling)
    assert huge["time_s"]["decode"] == pytest.approx(96 / 8 * 100 - sampling)
    with pytest.raises(InputError, match="decode_overlap must lie in"):
        estimate(_example(), 64, hw, Assumptions(decode_overlap=1.5))


def test_gpu_measure_report_calibrates(tmp_path, capsys):
    """A tools/gpu_measure.py report: the dense attention rate from its attention part, the
    rest of a DiT pass from its mfu part (GEMM rates from the shipped file), the kernels' GB/s."""
    from dancegrpo_hpc.perf.calibration import from_gpu_measure

    f = _measured_dit_flops()
    seq = 30 * 48 * 80 + 256
    report = {"schema": "dancegrpo-gpu-measure/1", "smoke": False, "device": {"hardware": "h200", "name": "NVIDIA H200"},
              "mfu": {"batch": 1, "model": {"attention_backend": "sdpa", "checkpoint_fraction": 0.0},
                      "flops": {"forward_linear": f["linear"], "forward_attention": f["attention"]},
                      "forward": {"seconds": {"median": 0.0614}}, "train_step": {"seconds": {"median": 0.2}}},
              "attention": {"grid": [30, 48, 80], "text_tokens": 256, "heads": 24, "head_dim": 128, "tile": [6, 8, 8],
                            "window": [3, 3, 3], "dense_backend": "sdpa",
                            "forward": {"dense_s": {"median": 0.2647}, "sliding_tile_s": {"median": 0.0782}},
                            "forward_backward": {"dense_s": {"median": 1.0268}, "sliding_tile_s": {"median": 0.1947}},
                            "block_mask": {"sparsity": 0.9, "build_s": {"median": 0.001}}},
              "kernels": {"copy_gbps": 4000.0, "rows": [{"op": "dance_step", "fused_gbps": 2400.0},
                                                        {"op": "dance_log_prob", "fused_gbps": 3600.0},
                                                        {"op": "dance_log_prob_fwd_bwd", "fused_gbps": 3000.0}]}}
    cal = from_gpu_measure(report)
    dense_fwd = 4 * seq ** 2 * 3072 / 0.2647 / H200_PEAK
    assert cal.attention("sdpa", "forward") == pytest.approx(dense_fwd)
    assert cal.sliding_tile.forward_mfu == pytest.approx(0.1 * dense_fwd * 0.2647 / 0.0782)
    assert cal.hbm_fraction["sde_step"] == pytest.approx(0.5) and cal.hbm_fraction["copy"] == pytest.approx(4000 / 4800)
    rest = 0.0614 - f["linear"] / 798.8e12 - f["attention"] / (dense_fwd * H200_PEAK)
    assert cal.rest_forward_bytes_per_flop == pytest.approx(rest * H200_HBM / f["linear"])
    assert calibrate(None, report)["calibration"] == cal
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(report) + "\n")
    assert _tool().main([EXAMPLE, "--calibrate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimate"]["assumptions"]["calibration"] == "gpu.json"
    with pytest.raises(InputError, match="ran --smoke sizes"):
        from_gpu_measure(dict(report, smoke=True))


def test_calibration_file_errors_are_one_line(tmp_path, capsys):
    from dancegrpo_hpc.perf.calibration import load_calibration

    with pytest.raises(InputError, match="no entry 'nope'; entries: h200 kernels 2026-12-04, "):
        load_calibration(entry="nope")
    with pytest.raises(InputError, match="'h200 kernels 2026-12-04': the entry lacks 'dit'"):
        load_calibration(entry="h200 kernels 2026-12-04")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    assert _tool().main([EXAMPLE, "--calibration", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "neither a calibration file" in err and err.count("\n") == 1


def test_tool_prints_the_calibration_and_the_levers(capsys):
    assert _tool().main([EXAMPLE, "--calibration", "--rollout-attention", "sliding_tile", "--sta-tile", "2,6,6",
                         "--comm-overlap", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "calibration '2026-12-04 run 3 (ac98513): compiled blocks, cuDNN attention', measured on H200 SXM" in out
    assert "attention sliding tile (2, 6, 6) window (3, 3, 3), 32.6% of the blocks" in out
    assert "split over the group's GPUs" in out and "comm overlap 50%" in out  # split: the engine's default
    assert _tool().main([EXAMPLE, "--calibration", "--no-split-decode"]) == 0
    assert "3 s per video on every GPU of the group (replicated)" in capsys.readouterr().out
    assert _tool().main([EXAMPLE, "--calibration", "--rollout-attention", "sliding_tile", "--sta-speedup", "3.38"]) == 0
    assert "attention sliding tile, x3.38 fixed over dense sdpa" in capsys.readouterr().out  # no tile to print
    assert "the old log-probs come from another function" in out  # rollout and training attention differ


def test_world_size_comes_from_the_config(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    tool = _tool()
    assert tool.main([EXAMPLE, "--json"]) == 0  # parallel.world_size: 64
    r = json.loads(capsys.readouterr().out)["estimate"]
    assert r["inputs"]["world_size"] == 64 and r["inputs"]["data"] == 8 and r["memory_fits"]
    assert tool.main([EXAMPLE, "parallel.world_size=null", "--json"]) == 0  # tensor x ulysses = 8 GPUs
    r = json.loads(capsys.readouterr().out)["estimate"]
    assert r["inputs"]["world_size"] == 8 and not r["memory_fits"]
    assert tool.main([EXAMPLE, "--world-size", "32", "--json"]) == 0  # --world-size still chooses
    assert json.loads(capsys.readouterr().out)["estimate"]["inputs"]["world_size"] == 32


def test_world_size_field_is_checked_against_the_launch(tmp_path, monkeypatch):
    from dancegrpo_hpc.config import Config, check_runnable, check_world_size
    from dancegrpo_hpc.validate import validate

    config = Config()
    config.output_dir = str(tmp_path / "out")
    config.parallel.world_size = 2
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InputError) as info:
        check_runnable(config)
    assert str(info.value) == ("config: parallel.world_size=2 but the launch has 4 ranks; launch 2 (torchrun --nnodes x "
                               "--nproc-per-node) or set parallel.world_size=4")
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_runnable(config)
    config.parallel.world_size = None
    check_world_size(config, 7)  # unset: any launch
    config.parallel.world_size, config.rollout.reward_ranks = 2, 1
    with pytest.raises(InputError, match=r"the launch has 2 ranks \(1 training \+ rollout.reward_ranks=1\); launch 3"):
        check_world_size(config, 2)
    check_world_size(config, 3)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(InputError, match="parallel.world_size=64 but the launch has 32 ranks"):
        validate(EXAMPLE, world=32, check_paths=False, strict_rewards=False)
    assert "world 64 = data 8" in validate(EXAMPLE, check_paths=False, strict_rewards=False)
    with pytest.raises(InputError, match="parallel.world_size must be an integer >= 1"):
        load_config(EXAMPLE, ["parallel.world_size=0"], paths=False)
