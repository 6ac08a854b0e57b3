"""tools/benchmark.py and dancegrpo_hpc/perf/benchmark.py: one tiny run of the toy
config; the report's schema, its rates against counts and times recomputed here, its
FLOPs against the performance model and against forward_flops x the work counted here,
calibration from the report, one-line errors, GPU detection; on CUDA, MFU and peak memory.
perf.measure's statistics for side-by-side benchmarks (interleaved pairs, spreads, the load
warning, saved-tensor bytes) against injected timings and closed forms."""

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


# ---- perf.measure: the statistics the side-by-side benchmarks stand on (no wall clock) ------------
from dancegrpo_hpc.perf import measure  # noqa: E402


def test_rounds_alternate_which_side_runs_first():
    assert [measure.round_order(2, r) for r in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    assert measure.round_order(3, 1) == [2, 1, 0]


class FakeMachine:
    """A clock that only the callables advance: each takes its base seconds x the load of its round."""

    def __init__(self, base, loads):
        self.now, self.base, self.loads, self.calls = 0.0, base, loads, []

    def clock(self):
        return self.now

    def fn(self, name):
        def run():
            round_index = sum(1 for c in self.calls if c == name)  # this callable's own call count
            self.calls.append(name)
            self.now += self.base[name] * self.loads[round_index]
        return run


def test_interleaved_pairs_run_back_to_back_and_a_passing_load_cancels_in_the_ratio():
    # one warm-up round, then 5 timed; a load that comes and goes multiplies both members of a pair alike
    loads = [1.0, 1.0, 6.0, 1.0, 3.0, 1.5]
    m = FakeMachine({"batched": 1.0, "sequential": 2.5}, loads)
    pairs = measure.interleaved_times([m.fn("batched"), m.fn("sequential")], rounds=5, warmup=1, clock=m.clock)
    assert m.calls == ["batched", "sequential"] + ["batched", "sequential", "sequential", "batched"] * 2 + \
        ["batched", "sequential"]
    assert pairs == [(1.0 * load, 2.5 * load) for load in loads[1:]]
    ratio = measure.spread(b / a for a, b in pairs)
    assert ratio == {"median": 2.5, "q1": 2.5, "q3": 2.5, "min": 2.5, "max": 2.5, "n": 5}
    # the same timings as separate per-side spreads vary 6x: only the per-pair ratio is stable
    sides = measure.spread(a for a, _ in pairs)
    assert (sides["min"], sides["max"]) == (1.0, 6.0)


def test_spread_quartiles_and_format():
    s = measure.spread([4.0, 1.0, 100.0, 3.0, 2.0])
    assert s == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 100.0, "n": 5}
    even = measure.spread([1.0, 2.0, 3.0, 4.0])  # inclusive quartiles: 1 + 0.75 (2 - 1), 3 + 0.25 (4 - 3)
    assert (even["median"], even["q1"], even["q3"]) == (2.5, 1.75, 3.25)
    assert measure.spread([7.0]) == {"median": 7.0, "q1": 7.0, "q3": 7.0, "min": 7.0, "max": 7.0, "n": 1}
    assert measure.format_spread(s, unit="x") == "3.00x [IQR 2.00-4.00, range 1.00-100.00, n=5]"


def test_other_processes_cpu_share_and_the_load_warning():
    stat = "cpu  100 5 50 1000 20 3 2 10 0 0\ncpu0 50 2 25 500 10 1 1 5 0 0\n"
    assert measure.proc_stat_busy_seconds(stat, 100) == pytest.approx((100 + 5 + 50 + 3 + 2 + 10) / 100)
    assert measure.proc_stat_busy_seconds("intr 1 2\n", 100) is None
    before = measure.CpuSample(wall=100.0, machine_busy=1000.0, own=40.0)
    after = measure.CpuSample(wall=110.0, machine_busy=1015.0, own=45.0)  # 15 CPU-s busy, 5 of them ours
    assert measure.others_cpu_share(before, after, cpus=2) == pytest.approx(0.5)
    alone = measure.CpuSample(wall=110.0, machine_busy=1004.9, own=45.0)  # tick rounding below our own time
    assert measure.others_cpu_share(before, alone, cpus=2) == 0.0
    assert measure.others_cpu_share(measure.CpuSample(100.0, None, 40.0), after, cpus=2) is None
    warning = measure.load_warning(0.5, [0.2, 0.2, 0.2], cpus=2)
    assert warning.startswith("WARNING: machine loaded") and "50% of the 2 CPUs" in warning
    assert measure.load_warning(0.05, [9.0, 9.0, 9.0], cpus=2) is None  # measured share wins over the load average
    assert "load average 3.0 on 2 CPUs" in measure.load_warning(None, [3.0, 1.0, 1.0], cpus=2)
    assert measure.load_warning(None, [0.5, 1.0, 1.0], cpus=2) is None


def test_saved_tensor_bytes_against_a_closed_form():
    """float32 = 4 bytes; what autograd saves for each op (torch's derivatives.yaml): exp its
    result, sin its input, mul both operands, mm both operands (both require grad)."""
    x = torch.randn(1000, requires_grad=True)
    w = torch.randn(10, 20, requires_grad=True)  # a "parameter": excluded
    h = torch.randn(5, 10, requires_grad=True)
    with measure.SavedTensorBytes(exclude=[w]) as saved:
        b = x.exp()  # saves b: 4000
        c = b.sin()  # saves b again: the same storage, counted once
        d = c * c  # saves c twice: 4000 once
        assert saved.current_bytes == 8000
        d.sum().backward()
        assert saved.current_bytes == 0  # the graph and what it saved are gone
        e = x[:500].exp()  # a second, smaller graph: 2000
        e.sum().backward()
        y = h.mm(w)  # saves h (200) and w (excluded)
        assert saved.current_bytes == 200
        base = x * 2.0  # a scalar multiply saves no tensor
        v = base[:10].sin()  # saves a 10-element view: the whole 1000-element storage stays held
        assert saved.current_bytes == 200 + 4000
        (y.sum() + v.sum()).backward()
    assert saved.current_bytes == 0
    assert saved.peak_bytes == 8000  # graphs freed before the next one: the largest, not the sum


def test_report_records_the_machine_load_and_the_table_warns(run):
    report = run[0]
    machine = report["device"]["machine"]
    assert machine["cpus"] == os.cpu_count() and set(machine) >= {"others_cpu_share", "load_average", "warning"}
    assert report["device"]["load_average"] == machine["load_average"]
    loaded = json.loads(json.dumps(report))
    loaded["device"]["machine"]["warning"] = "WARNING: machine loaded: other processes used 80% of the 2 CPUs"
    assert format_report(loaded).endswith("\n" + loaded["device"]["machine"]["warning"])
    quiet = json.loads(json.dumps(report))
    quiet["device"]["machine"]["warning"] = None
    assert "WARNING" not in format_report(quiet)
