"""The benchmark tool's JSON contract and the quick-start entry point (tiny sizes;
timings are never asserted)."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from script_utils import load_script

from dancegrpo_hpc.checks import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bench_kernels_json_contract():
    report = json.loads(run("tools/bench_kernels.py", "--sizes", "64K,16M", "--reps", "1", "--json").strip().splitlines()[-1])
    assert report["copy_gbps"] > 0
    ops = {r["op"] for r in report["rows"]}
    assert {"dance_step", "flow_step", "dance_log_prob", "dance_log_prob_fwd_bwd"} <= ops
    for row in report["rows"]:
        assert {"numel", "op", "fused_s", "eager_s", "speedup", "fused_gbps"} <= set(row)
        assert row["fused_s"] > 0 and row["eager_s"] > 0
        assert abs(row["speedup"] - row["eager_s"] / row["fused_s"]) < 1e-9
    assert {r["numel"] for r in report["rows"]} == {64 << 10, 16 << 20}
    assert report["targets"]["numel"] == 16 << 20


def test_check_sampling_cli():
    out = run("-m", "dancegrpo_hpc.cli", "check-sampling", "--samples", "20000")
    assert "6/6 samplers reproduce N(m, s^2)" in out


def test_test_script_fails_when_no_test_runs():
    """pytest's 'no tests ran' (exit 5) must not pass silently through tools/test.sh."""
    out = subprocess.run(["bash", "tools/test.sh", "-q", "-k", "no_such_test_anywhere", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 5, out.stdout + out.stderr


def test_torch_installer_refuses_cuda_builds_on_cpu_machines():
    mod = load_script("tools/install_torch.py")

    def plan(*pairs):
        return [{"metadata": {"name": n, "version": v}} for n, v in pairs]

    assert mod.cuda_in_plan(plan(("torch", "2.13.0+cpu"), ("filelock", "3.0"))) == []
    assert mod.cuda_in_plan(plan(("torch", "2.13.0"), ("nvidia-cublas", "13.0"), ("triton", "3.6"))) == [
        "torch 2.13.0", "nvidia-cublas", "triton"]
    assert mod.cuda_in_plan(plan(("filelock", "3.0"))) == []  # torch already satisfied: nothing to refuse


def test_bench_model_json_contract():
    report = json.loads(run("tools/bench_model.py", "--configs", "small", "--rounds", "1", "--json").strip().splitlines()[-1])
    rows = report["rows"]
    assert {(r["config"], r["pass"]) for r in rows} == {("small", "fwd"), ("small", "fwd_bwd")}
    for r in rows:
        assert {"config", "pass", "ours_s", "diffusers_s", "speedup"} <= set(r)
        assert r["ours_s"] > 0 and r["diffusers_s"] > 0 and r["output_rel_err"] < 1e-5


def test_parameter_report_cli():
    out = run("-m", "dancegrpo_hpc.models.hunyuan_video.report", "--tp", "8")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["parameters"] == 12_821_012_544 and report["tp"] == 8


def test_make_tiny_real_writes_a_world_the_tiny_configs_validate_on(tmp_path, monkeypatch):
    """tools/make_tiny_real.py into a folder of our own: the commands it prints carry the path
    overrides, and `validate` with each config's overrides passes, paths checked (the same
    function writes test_real_path's fixture, which runs the iterations)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from dancegrpo_hpc.cli import main

    out = tmp_path / "tiny_real"
    lines = [shlex.split(line) for line in run("tools/make_tiny_real.py", "--out", str(out)).splitlines()
             if line.startswith("  ")]
    assert [a[:2] for a in lines] == [["dancegrpo-hpc", "validate"], ["dancegrpo-hpc", "train"],
                                      ["dancegrpo-hpc", "train"], ["python", "tools/benchmark.py"]]
    assert lines[0][2:] == lines[1][2:] and f"model.path={out}/transformer" in lines[0]
    monkeypatch.chdir(ROOT)  # the printed config paths are relative to where the tool ran
    for args in lines[1:3]:
        assert main(["validate", *args[2:]]) == 0, args
    again = subprocess.run([sys.executable, "tools/make_tiny_real.py", "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_guidance_experiment_iterations_to_target_and_paired_speedups():
    mod = load_script("tools/guidance_experiment.py")
    curve = [(0, 0.30), (3, 0.46), (6, 0.41), (9, 0.47), (12, 0.48)]
    assert mod.first_reaching(curve, 0.45) == 3
    assert mod.first_reaching(curve, 0.45, sustained=True) == 9  # the dip at 6 does not count as reached
    assert mod.first_reaching(curve, 0.50) is None
    # plain 12 vs guided 3; plain never (counted as 30, a lower bound); guided never
    pairs = mod.paired_speedups([12, None, 6], [3, 10, None], iterations=30)
    assert pairs == [(4.0, False), (3.0, True), None]
    assert mod.describe_speedups(pairs[:2]) == ">= 3.50x +- 0.71"
    assert mod.describe_speedups(pairs) == "n/a"


def _pretrain_run(mod, state_path, steps):
    """pretrain_toy's train() on the toy world with a --state file; returns (model, average)."""
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset
    from dancegrpo_hpc.models.toy import ToyTextEncoder, ToyVAE, ToyWorld

    torch.manual_seed(0)
    model = HunyuanVideoDiT(preset("toy"))
    args = mod.parse_args(["--state", str(state_path), "--steps", str(steps), "--batch", "2"])
    return model, mod.train(model, ToyWorld(), ToyTextEncoder(), ToyVAE(), args)


def test_pretrain_toy_resumes_its_state_file_without_unpickling_code(tmp_path, capsys):
    mod = load_script("tools/pretrain_toy.py")
    # a state file as save_state writes it resumes under weights_only loading
    state = tmp_path / "state.pt"
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    average = mod.WeightAverage(model, 0.9)
    generator = torch.Generator().manual_seed(7)
    mod.save_state(str(state), model, optimizer, average, generator, 3, 0.25)
    loaded = mod.load_state(str(state))
    assert loaded["step"] == 3 and loaded["smoothed"] == 0.25
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(loaded["generator"], generator.get_state())

    # a file carrying code: refused in one line, the code never runs (weights_only=False ran it)
    ran = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    with pytest.raises(InputError, match=r"--state .*evil.pt: holds pickled objects other than tensors") as info:
        _pretrain_run(mod, evil, steps=1)
    assert "\n" not in str(info.value) and not ran.exists()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(state.read_bytes()[:100])
    with pytest.raises(InputError, match=r"--state .*cut.pt: not a training-state file of this tool"):
        mod.load_state(str(cut))

    # the toy DiT's own state: train() resumes from it at the saved step
    toy_state = tmp_path / "toy_state.pt"
    torch.manual_seed(1)
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset

    saved = HunyuanVideoDiT(preset("toy"))
    saved_opt = torch.optim.AdamW(saved.parameters())
    mod.save_state(str(toy_state), saved, saved_opt, mod.WeightAverage(saved, 0.9), torch.Generator(), 2, 0.5)
    resumed, _ = _pretrain_run(mod, toy_state, steps=2)  # already at step 2: loads, trains nothing
    assert f"resumed from {toy_state} at step 2" in capsys.readouterr().out
    weights = {n: t for n, t in saved.state_dict().items() if isinstance(t, torch.Tensor)}  # (megatron adds None)
    assert weights and all(torch.equal(resumed.state_dict()[n], t) for n, t in weights.items())


def test_bench_train_json_contract_and_exact_step_memory():
    """tools/bench_train.py on a tiny rollout: the speed-up and rates are the statistics of the
    interleaved pairs it reports; what a training step saves for backward does not grow with
    the trained timesteps (each backward frees its graph before the next forward), exactly."""
    import statistics

    report = json.loads(run("tools/bench_train.py", "--rounds", "2", "--prompts", "1", "--group", "2",
                            "--json").strip().splitlines()[-1])
    pairs = report["rollout_pairs_s"]
    assert len(pairs) == 2 and all(a > 0 and b > 0 for a, b in pairs)
    samples = report["workload"]["samples"]
    assert samples == 2
    speedup = report["rollout_speedup"]
    assert speedup["median"] == pytest.approx(statistics.median(b / a for a, b in pairs), rel=1e-12)
    assert (speedup["min"], speedup["max"], speedup["n"]) == (min(b / a for a, b in pairs),
                                                              max(b / a for a, b in pairs), 2)
    assert report["rollout_batched_sps"] == pytest.approx(statistics.median(samples / a for a, _ in pairs), rel=1e-12)
    assert report["train_step_s"] == pytest.approx(statistics.median(report["train_step_s_rounds"]), rel=1e-12)
    memory = report["memory"]
    assert memory["one_timestep"]["timesteps"] == 1 and memory["all_timesteps"]["timesteps"] == 9
    assert memory["one_timestep"]["saved_bytes"] > 0
    assert memory["all_timesteps"]["saved_bytes"] == memory["one_timestep"]["saved_bytes"] and memory["ratio"] == 1.0
    assert report["machine"]["cpus"] == os.cpu_count() and "warning" in report["machine"]


def test_bench_train_bad_rounds_is_one_line(capsys):
    assert load_script("tools/bench_train.py").main(["--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "bench_train: --rounds must be an integer >= 1; got 0\n"


def test_bench_kernels_and_bench_model_report_the_per_round_spread():
    kernels = json.loads(run("tools/bench_kernels.py", "--sizes", "64K", "--reps", "3", "--json").strip().splitlines()[-1])
    for row in kernels["rows"]:
        s = row["speedup_spread"]
        assert s["n"] == 3 and s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
    assert set(kernels["machine"]) >= {"cpus", "others_cpu_share", "warning"}
    model = json.loads(run("tools/bench_model.py", "--configs", "small", "--rounds", "3", "--json").strip().splitlines()[-1])
    for row in model["rows"]:
        s = row["speedup_spread"]
        assert s["n"] == 3 and row["speedup"] == s["median"] and s["min"] <= s["median"] <= s["max"]
    assert set(model["machine"]) >= {"cpus", "others_cpu_share", "warning"}
