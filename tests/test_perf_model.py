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
    assert tool.main(explicit + ["parallel.sequence_parallel=true"]) == 0
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
