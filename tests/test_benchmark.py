"""tools/benchmark.py and dancegrpo_hpc/perf/benchmark.py: one tiny run of the toy
config; the report's schema, its rates against counts and times recomputed here, its
FLOPs against the performance model and against forward_flops x the work counted here,
calibration from the report, one-line errors, GPU detection; on CUDA, MFU and peak memory."""

import json
import math
import os

import pytest
import torch

from dancegrpo_hpc.config import load_config
from dancegrpo_hpc.memory import model_config
from dancegrpo_hpc.perf import HARDWARE, detect, estimate, forward_flops, hardware, peak_flops
from dancegrpo_hpc.perf.benchmark import PHASES, SCHEMA, calibration_input, format_report, run_benchmark
from script_utils import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "examples", "toy_t2v.yaml")
PROMPTS, GROUP, STEPS, TAU = 2, 2, 3, 0.6
TINY = [f"rollout.prompts_per_iteration={PROMPTS}", f"rollout.group_size={GROUP}", "rollout.micro_batch=2",
        f"sampling.steps={STEPS}", f"train.timestep_fraction={TAU}"]


def _tool(name):
    return load_script(f"tools/{name}.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The CLI once, in-process: (report, config, out dir the config names, printed JSON)."""
    tmp = tmp_path_factory.mktemp("bench")
    never = tmp / "never-written"  # the config's output_dir: the benchmark must not write there
    out = tmp / "bench.json"
    argv = [TOY, *TINY[:2], "--set", TINY[2], "--set", TINY[3], TINY[4], f"output_dir={never}", "--warmup", "0",
            "--rounds", "1", "--json", "--out", str(out), "--quiet"]
    assert _tool("benchmark").main(argv) == 0
    report = json.loads(out.read_text())
    return report, load_config(TOY, TINY + [f"output_dir={never}"]), never


def _video_text_tokens(config):
    """Tokens per sample, from the toy world's own VAE and text encoder and the DiT's patch."""
    from dancegrpo_hpc.models.toy import ToyTextEncoder, ToyVAE

    d, m = config.data, model_config(config)
    _, c, f, h, w = ToyVAE().encode(torch.zeros(1, d.frames, 3, d.height, d.width)).shape
    video = math.ceil(f / m.patch_size_t) * (h // m.patch_size) * (w // m.patch_size)
    return video, ToyTextEncoder(m.text_embed_dim, m.pooled_projection_dim).max_tokens, m


def test_report_schema_and_no_outputs(run):
    report, config, never = run
    assert report["schema"] == SCHEMA
    for key in ("config", "device", "layout", "workload", "phases", "iteration", "overlap", "memory", "definitions"):
        assert key in report, key
    assert set(report["phases"]) == set(PHASES)
    assert report["config"]["name"] == "toy_t2v" and report["config"]["overrides"][:2] == TINY[:2]
    assert "tools/benchmark.py" in report["config"]["command"]
    assert report["config"]["resolved"]["sampling"]["steps"] == STEPS
    assert report["device"]["type"] == "cpu" and report["device"]["torch"] == torch.__version__
    assert report["layout"] == {"world_size": 1, "tensor": 1, "ulysses": 1, "data": 1, "sequence_parallel": False,
                                "zero": True, "rank": 0}
    assert "process-wide" in report["memory"]["kind"]
    assert not never.exists()  # checkpoints and metrics went to a removed temporary directory
    for name, phase in list(report["phases"].items()) + [("iteration", report["iteration"])]:
        s = phase["seconds"]
        assert len(s["rounds"]) == 1 and s["median"] > 0 and s["min"] <= s["median"] <= s["max"], name
        assert phase["peak_memory_bytes"] > 0, name
        assert "mfu" not in phase, name  # CPU: achieved FLOP/s only


def test_rates_match_counts_over_time(run):
    report, config, _ = run
    video, _, _ = _video_text_tokens(config)
    samples = PROMPTS * GROUP
    trained = math.ceil(TAU * (STEPS - 1))  # DanceGRPO: ceil(tau (T - 1)) timesteps per sample
    forwards = {"rollout": samples * STEPS, "train": samples * trained}  # toy rewards never fail: all kept
    forwards["iteration"] = forwards["rollout"] + forwards["train"]
    phases = dict(report["phases"], iteration=report["iteration"])
    for name, phase in phases.items():
        t = phase["seconds"]["median"]
        assert phase["videos"] == samples, name
        assert phase["videos_per_s"] == pytest.approx(samples / t, rel=1e-12), name
        if name in forwards:
            assert phase["dit_forwards"] == forwards[name], name
            assert phase["tokens_per_s"] == pytest.approx(video * forwards[name] / t, rel=1e-12), name
            assert phase["flops_per_s"] == pytest.approx(phase["flops"] / t, rel=1e-12), name
        else:
            assert "tokens_per_s" not in phase and "flops" not in phase, name
    o = report["overlap"]
    assert o["phases_sum_s"] == pytest.approx(sum(report["phases"][n]["seconds"]["median"] for n in PHASES))
    assert o["saved_s"] == pytest.approx(o["phases_sum_s"] - report["iteration"]["seconds"]["median"])
    assert o["hideable_s"] == report["phases"]["reward"]["seconds"]["median"]
    assert set(report["iteration"]["trainer_split_s"]) == {"time_rollout_s", "time_reward_wait_s", "time_train_s"}


def test_flops_equal_the_perf_model(run):
    report, config, _ = run
    predicted = estimate(config, 1, hardware("h100"))["flops"]
    phases = report["phases"]
    assert phases["rollout"]["flops"] == pytest.approx(predicted["rollout_per_gpu"], rel=1e-12)
    assert phases["train"]["flops"] == pytest.approx(predicted["train_per_gpu"], rel=1e-12)
    # independently: forward FLOPs x samples x steps; trained pairs x (forward + 2x backward), no recompute
    video, text, model = _video_text_tokens(config)
    fwd = forward_flops(model, video, text)["total"]
    assert config.model.activation_checkpointing == 0 and config.train.kl_coef == 0
    samples, trained = PROMPTS * GROUP, math.ceil(TAU * (STEPS - 1))
    assert report["workload"]["forward_flops_per_sample"] == fwd
    assert phases["rollout"]["flops"] == pytest.approx(samples * STEPS * fwd, rel=1e-12)
    assert phases["train"]["flops"] == pytest.approx(samples * trained * 3 * fwd, rel=1e-12)
    assert report["iteration"]["flops"] == pytest.approx(phases["rollout"]["flops"] + phases["train"]["flops"])


def test_calibration_from_the_report(run, tmp_path, capsys):
    """tools/perf_model.py --calibrate reads the report through the one calibrate() path and
    gets back the FLOP/s the benchmark measured."""
    report, _, _ = run
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report) + "\n")
    assert _tool("perf_model").main(["--calibrate", str(path), "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    assert cal["rollout_flops_s"] == pytest.approx(report["phases"]["rollout"]["flops_per_s"], rel=1e-9)
    assert cal["train_flops_s"] == pytest.approx(report["phases"]["train"]["flops_per_s"], rel=1e-9)
    config, measurement, world = calibration_input(report)
    assert world == 1 and config.sampling.steps == STEPS
    assert measurement["train_step_s"] == pytest.approx(report["phases"]["train"]["seconds"]["median"])


def test_table(run):
    text = format_report(run[0])
    for name in PHASES + ("iteration",):
        assert f"\n{name} " in text
    assert "the overlap can hide at most" in text and "no MFU" in text and "load average" in text


@pytest.mark.parametrize("argv,message", [
    ([TOY, "--rounds", "0", "--quiet"], "rounds must be an integer >= 1"),
    ([TOY, "--set", "sampling.stepz=3", "--quiet"], "sampling.stepz"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert _tool("benchmark").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmark: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("name,preset", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H800", "h800"), ("NVIDIA H200", "h200"),
    ("NVIDIA H100 PCIe", None), ("NVIDIA H100 NVL", None), ("NVIDIA GH200 480GB", None),
    ("NVIDIA A100-SXM4-80GB", None),
])
def test_gpu_detection(name, preset):
    assert detect(name) == preset


def test_mfu_peak_follows_precision():
    fp32 = load_config(TOY, [])
    bf16 = load_config(TOY, ["model.dtype=bfloat16"])
    assert peak_flops(fp32, HARDWARE["h100"]) == (HARDWARE["h100"].tf32_flops, "tf32")
    assert peak_flops(bf16, HARDWARE["h200"]) == (989.4e12, "bf16")


@pytest.mark.gpu
def test_benchmark_on_cuda(tmp_path):
    config = load_config(TOY, TINY + [f"output_dir={tmp_path / 'never'}"])
    report = run_benchmark(config, warmup=1, rounds=1)
    device = report["device"]
    assert device["type"] == "cuda" and device["name"] == torch.cuda.get_device_name()
    assert "max_memory_allocated" in report["memory"]["kind"]
    preset = detect(device["name"])
    for name in ("rollout", "train", "iteration"):
        phase = report["iteration"] if name == "iteration" else report["phases"][name]
        assert phase["peak_memory_bytes"] > 0 and phase["flops_per_s"] > 0
        if preset is None:
            assert "mfu" not in phase and "MFU omitted" in device["note"]
        else:
            peak = peak_flops(config, HARDWARE[preset])[0]
            assert phase["mfu"] == pytest.approx(phase["flops_per_s"] / peak, rel=1e-12)
