"""Config loading and checks, `dancegrpo-hpc validate`, the memory estimate, the example
configs and the launch scripts."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from dancegrpo_hpc import config as cfg
from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.config import Config, check_layout, check_paths, check_runnable, load_config
from dancegrpo_hpc.memory import GIB, batch_sizes, dit_parameters, estimate_memory, latent_shape, model_config
from dancegrpo_hpc.validate import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# example -> the world size it is written for
CLUSTER_EXAMPLES = {"hunyuan_t2v_64gpu.yaml": 64, "skyreels_i2v_32gpu.yaml": 32, "hunyuan_t2i.yaml": 16}


def example(name: str) -> str:
    return os.path.join(EXAMPLES, name)


def cluster(name: str, *overrides, paths: bool = False) -> Config:
    return load_config(example(name), list(overrides), paths=paths)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def run_module(*args, env=None, timeout=120):
    environment = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------
# loading

def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 3e-5, "iterations": 7}, "sampling": {"eta": 0.5}}))
    config = load_config(str(path), ["train.lr=2e-5", "rollout.group_size=4"])
    assert config.train.lr == 2e-5  # override beats YAML
    assert config.train.iterations == 7  # YAML beats default
    assert config.sampling.eta == 0.5
    assert config.rollout.group_size == 4  # override of a default
    assert config.sampling.steps == Config().sampling.steps  # untouched default


def test_toy_example_is_the_defaults_plus_its_commented_tuning():
    """The quick-start config differs from the trainer defaults only where its
    comments say why (a tiny model, a 5-minute CPU budget)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    toy, defaults = flat(load_config(example("toy_t2v.yaml")).to_dict()), flat(Config().to_dict())
    changed = {k: toy[k] for k in toy if toy[k] != defaults[k]}
    assert changed == {"model.activation_checkpointing": 0.0, "rollout.micro_batch": 8, "train.iterations": 40,
                       "rollout.prompts_per_iteration": 8, "rollout.group_size": 4,
                       "train.lr": 1e-4, "data.eval_prompts": 14, "eval.samples_per_prompt": 4}


def test_choice_mirrors_match_the_model_registries():
    from dancegrpo_hpc.attention import BACKENDS
    from dancegrpo_hpc.distributed import spec
    from dancegrpo_hpc.models.hunyuan_video import model

    assert cfg.ATTENTION_BACKENDS == tuple(BACKENDS)
    assert cfg.LAYER_SPECS == spec.SPECS
    assert cfg.FP8_RECIPES == spec.FP8_RECIPES
    assert cfg.LOCAL_FP8_RECIPES == spec.LOCAL_FP8_RECIPES
    assert cfg.ADALN_MODES == model.ADALN_MODES


# ---------------------------------------------------------------------------------------------
# every error names its field, on one line

@pytest.mark.parametrize("overrides, field", [
    (["train.lrr=1"], "train.lrr"),  # unknown key
    (["bogus=1"], "bogus"),
    (["train.iterations=many"], "train.iterations"),  # wrong type
    (["parallel.zero=3"], "parallel.zero"),
    (["sampling.kind=euler"], "sampling.kind"),  # bad choice
    (["model.attention=magic"], "model.attention"),
    (["model.layer_spec=te"], "model.layer_spec"),
    (["model.fp8=block"], "model.fp8"),  # a Transformer Engine recipe with the local spec
    (["data.source=webdataset"], "data.source"),
    (["train.best_of_n=3"], "train.best_of_n"),  # odd
    (["train.best_of_n=10"], "train.best_of_n"),  # above the group size
    (["train.cfg_training=true"], "train.cfg_training"),  # without sampling.cfg_scale > 1
    (["model.preset=hunyuan-t2v-13b"], "model.path"),  # a real model needs its checkpoint
    (["model.path=/nonexistent/dancegrpo-model"], "model.path"),  # missing path
    (["data.vae=/tmp"], "data.vae"),  # a real-data field with the toy world
    (["data.source=prompts", "data.vae=/tmp"], "data.prompts"),
    (["rewards=[]"], "rewards"),
    # issue 13: out-of-range values that were accepted
    ([f"seed={2**63}"], "seed"),  # torch seeds are signed 64-bit
    (["seed=-1"], "seed"),
    (["train.betas=[1.0, 0.999]"], "train.betas[0]"),  # AdamW needs each beta in [0, 1)
    (["train.betas=[0.9, -0.1]"], "train.betas[1]"),
    (["train.weight_decay=-1e-4"], "train.weight_decay"),
    (["train.lr_warmup=-1"], "train.lr_warmup"),
    (["eval.every=-1"], "eval.every"),
    (["train.lr=0"], "train.lr"),
    (["train.lr=-1e-5"], "train.lr"),
    (["train.lr=.inf"], "train.lr"),  # accepted before: one update destroyed the weights
    (["train.lr=1e400"], "train.lr"),  # YAML reads it as a string; float() overflows to inf
    (["train.lr=.nan"], "train.lr"),
    (["rewards=[{name: toy_motion, weight: -1}]"], "rewards[0]"),  # checked here, not after the DiT loads
])
def test_config_errors_name_the_field(overrides, field):
    message = error_of(load_config, None, overrides)
    assert field in message and message.startswith("config"), message


def test_boundary_values_are_accepted():
    config = load_config(None, [f"seed={2**63 - 1}", "train.betas=[0.0, 0.999]", "train.weight_decay=0",
                                "train.lr_warmup=0", "eval.every=0"])
    assert config.seed == 2**63 - 1 and config.train.betas == (0.0, 0.999) and config.train.weight_decay == 0.0


def _float_fields(cls, prefix=""):
    """Dotted names of every float / Optional[float] field of the config tree."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, name = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            yield from _float_fields(hint, name + ".")
        elif hint is float or (typing.get_origin(hint) is typing.Union and float in typing.get_args(hint)):
            yield name


FLOAT_FIELDS = sorted(_float_fields(Config))


def test_every_float_field_is_found():
    assert len(FLOAT_FIELDS) >= 18 and "train.lr" in FLOAT_FIELDS and "guidance.scale" in FLOAT_FIELDS


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_field_must_be_finite(field, value):
    message = error_of(load_config, None, [f"{field}={value}"])
    assert message.startswith(f"config: {field} must be a finite number"), message


def test_non_finite_list_and_reward_floats_name_their_place():
    assert "train.betas[1] must be a finite" in error_of(load_config, None, ["train.betas=[0.9, .nan]"])
    assert "rewards[0].weight must be a finite" in error_of(load_config, None,
                                                            ["rewards=[{name: toy_motion, weight: .inf}]"])


def test_real_data_requirements(tmp_path):
    base = ["data.source=prompts", "data.prompts=p.txt", "data.frames=53", "data.height=480", "data.width=480"]
    assert "data.vae" in error_of(load_config, None, base + ["data.embeddings=e"], paths=False)
    assert "data.embeddings" in error_of(load_config, None, base + ["data.vae=v"], paths=False)
    load_config(None, base + ["data.vae=v", "data.text_encoder=t"], paths=False)  # an encoder instead of a cache
    assert "data.frames" in error_of(load_config, None, base + ["data.vae=v", "data.embeddings=e", "data.frames=8"],
                                     paths=False)
    assert "data.height" in error_of(load_config, None, base + ["data.vae=v", "data.embeddings=e", "data.height=500"],
                                     paths=False)


def test_paths_are_checked_in_one_place_and_can_be_skipped(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    (tmp_path / "vae").mkdir()
    real = ["data.source=prompts", f"data.prompts={prompts}", f"data.vae={tmp_path / 'vae'}", "data.frames=1",
            "data.height=64", "data.width=64"]
    assert "data.embeddings" in error_of(load_config, None, real + [f"data.embeddings={tmp_path / 'cache'}"])
    config = load_config(None, real + [f"data.embeddings={tmp_path / 'cache'}"], paths=False)
    assert "data.embeddings" in error_of(check_paths, config)
    (tmp_path / "cache").mkdir()
    check_paths(config)
    assert "data.prompts" in error_of(load_config, None, real[:1] + [f"data.prompts={tmp_path}/none.txt"] + real[2:]
                                      + [f"data.embeddings={tmp_path / 'cache'}"])


def test_runnable_checks_paths_before_loading():
    check_runnable(Config())
    message = error_of(check_runnable, cluster("hunyuan_t2v_64gpu.yaml"))  # /data/... does not exist here
    assert "model.path" in message and "diffusers-format checkpoint" in message


@pytest.mark.parametrize("overrides, world, field", [
    (["rollout.prompts_per_iteration=3"], 2, "rollout.prompts_per_iteration"),
    (["rollout.micro_batch=5"], 1, "rollout.micro_batch"),
    (["train.micro_batch=5"], 1, "train.micro_batch"),
    (["train.updates_per_rollout=3"], 1, "train.updates_per_rollout"),
    (["parallel.tensor=2"], 3, "parallel.tensor"),
    (["parallel.ulysses=2"], 3, "parallel.ulysses"),
    (["parallel.sequence_parallel=true"], 1, "parallel.sequence_parallel"),
])
def test_layout_errors_name_the_field(overrides, world, field):
    message = error_of(check_layout, load_config(None, overrides), world)
    assert field in message, message


def test_heads_must_divide_by_tensor_times_ulysses():
    message = error_of(validate, example("toy_t2v.yaml"), ["parallel.ulysses=3"], 3)
    assert "parallel.tensor x parallel.ulysses" in message and "heads" in message
    message = error_of(validate, example("hunyuan_t2v_64gpu.yaml"), ["parallel.tensor=16"], 64, check_paths=False,
                       strict_rewards=False)
    assert "24 attention heads" in message


def test_model_must_match_the_data_channels(tmp_path):
    message = error_of(validate, example("toy_t2v.yaml"), ["model.preset=tiny", f"model.path={tmp_path}"], 1)
    assert "model.preset" in message and "channels" in message


# ---------------------------------------------------------------------------------------------
# validate

@pytest.mark.parametrize("name, world", sorted(CLUSTER_EXAMPLES.items()))
def test_cluster_examples_validate(name, world):
    text = validate(example(name), world=world, check_paths=False)  # their rewards are registered (rewards/builtin.py)
    assert f"world {world} = " in text and "warning: rewards not registered here" not in text
    assert "memory per rank" in text


def test_cluster_examples_need_their_paths_and_rewards(tmp_path):
    assert "model.path" in error_of(validate, example("hunyuan_t2v_64gpu.yaml"), world=64, strict_rewards=False)
    with open(example("hunyuan_t2v_64gpu.yaml")) as f:
        (tmp_path / "unknown_reward.yaml").write_text(f.read().replace("name: videoalign_vq", "name: videoalign_xq"))
    message = error_of(validate, str(tmp_path / "unknown_reward.yaml"), world=64, check_paths=False)
    assert "rewards[0].name" in message and "videoalign_xq" in message
    text = validate(str(tmp_path / "unknown_reward.yaml"), world=64, check_paths=False, strict_rewards=False)
    assert "warning: rewards not registered here: videoalign_xq" in text


def test_transformer_engine_fp8_config_validates_on_cpu():
    text = validate(example("hunyuan_t2v_64gpu.yaml"), ["model.layer_spec=transformer_engine", "model.fp8=delayed",
                                                        "model.attention=te"], 64, check_paths=False,
                    strict_rewards=False)
    assert "needs at run time: transformer-engine (model.attention=te" in text
    assert "Hopper GPUs for FP8 (model.fp8=delayed)" in text


def test_world_size_from_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "world 4 = data 4" in validate(example("toy_t2v.yaml"))
    monkeypatch.delenv("WORLD_SIZE")
    assert "world 2 = data 1 x tensor 1 x ulysses 2" in validate(example("toy_t2v.yaml"), ["parallel.ulysses=2"])


def test_cli_validates_the_toy_example():
    result = run_module("dancegrpo_hpc.cli", "validate", "examples/toy_t2v.yaml")
    assert result.returncode == 0, result.stderr
    assert "examples/toy_t2v.yaml: valid" in result.stdout and "world 1 = " in result.stdout


def test_cli_invalid_config_prints_one_line_and_exits_2():
    result = run_module("dancegrpo_hpc.cli", "validate", "examples/toy_t2v.yaml", "train.best_of_n=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.best_of_n" in lines[0], result.stderr


def test_64gpu_example_fits_an_80gb_gpu_and_validates_in_seconds():
    start = time.perf_counter()
    result = run_module("dancegrpo_hpc.validate", "examples/hunyuan_t2v_64gpu.yaml", "--no-check-paths",
                        "--no-check-rewards", "--world-size", "64")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 20, f"validate of the 13B config took {elapsed:.1f} s"
    total = float(re.search(r"^\s+total\s+([\d.]+)", result.stdout, re.M).group(1))
    assert 20 < total < 80, result.stdout
    assert result.stderr.strip() == "", result.stderr  # no megatron-core warnings leak into the report


# ---------------------------------------------------------------------------------------------
# memory estimate

@pytest.mark.parametrize("name", ["tiny", "tiny-i2v-concat", "tiny-i2v-token-replace", "toy", "hunyuan-t2v-13b"])
def test_parameter_count_equals_the_meta_device_model(name):
    from dancegrpo_hpc.models.hunyuan_video.config import PRESETS
    from dancegrpo_hpc.models.hunyuan_video.report import parameter_report

    if name not in PRESETS:
        pytest.skip(f"preset {name!r} is not defined in this checkout")
    model = PRESETS[name]
    for tp in (1, 2, 4) if name != "hunyuan-t2v-13b" else (2,):
        for adaln in ("replicated", "column"):
            report = parameter_report(model, tp, adaln=adaln)
            assert dit_parameters(model, 1, adaln) == report["parameters"]
            assert dit_parameters(model, tp, adaln) == report["parameters_per_rank"], (tp, adaln)


def test_buffers_and_states_by_hand():
    config = load_config(example("toy_t2v.yaml"), ["train.ema_decay=0.99", "train.kl_coef=0.1"])
    model = model_config(config)
    params = dit_parameters(model)
    c, f, h, w = latent_shape(config, model)
    assert (c, f, h, w) == (12, 8, 16, 16)  # toy VAE: 12 channels, no time compression, 2x space
    mem = estimate_memory(config, 1)
    samples = 4 * 8
    assert mem["parameters"] == mem["gradients"] == params * 4
    assert mem["optimizer"] == params * 8
    assert mem["ema"] == params * 4 and mem["reference"] == params * 4
    assert mem["rollout_latents"] == samples * 11 * c * f * h * w * 4  # T + 1 = 11 float32 latents per sample
    assert mem["rollout_log_probs"] == samples * 10 * 4
    assert mem["host_pinned"] == 0
    resident = sum(v for k, v in mem.items() if k not in ("activations", "rollout_forward", "total", "host_pinned"))
    assert mem["total"] == resident + max(mem["activations"], mem["rollout_forward"])

    pinned = estimate_memory(load_config(example("toy_t2v.yaml"), ["rollout.buffer_device=cpu"]), 1)
    assert pinned["rollout_latents"] == 0 and pinned["host_pinned"] == mem["rollout_latents"]
    sharded = estimate_memory(config, 4)  # ZeRO over 4 data-parallel ranks, one prompt each
    assert sharded["optimizer"] == math.ceil(params * 8 / 4)
    assert sharded["rollout_latents"] == mem["rollout_latents"] // 4
    assert estimate_memory(load_config(example("toy_t2v.yaml"), ["parallel.zero=false"]), 4)["optimizer"] == params * 8


def test_video_latents_and_cluster_estimate():
    config = cluster("hunyuan_t2v_64gpu.yaml")
    model = model_config(config)
    assert latent_shape(config, model) == (16, 14, 60, 60)  # 53 frames -> (53 - 1) / 4 + 1; 480 / 8
    sizes = batch_sizes(config, 8)
    assert sizes == {"local": 96, "kept": 32, "per_update": 16, "train_forward": 1, "rollout_forward": 8}
    mem = estimate_memory(config, 64)
    per_rank = dit_parameters(model, 2)
    assert mem["parameters"] == per_rank * 2  # bfloat16
    # AdamW moments + float32 master weights, ZeRO over data 8 x ulysses 4
    assert mem["optimizer"] == math.ceil(per_rank * (8 + 4) / 32)
    assert mem["rollout_latents"] == 96 * 17 * 16 * 14 * 60 * 60 * 4
    assert mem["total"] < 80 * GIB


def test_activation_estimate_responds_to_the_layout():
    def activations(*overrides):
        return estimate_memory(cluster("hunyuan_t2v_64gpu.yaml", *overrides), 64)["activations"]

    base = activations()
    assert activations("model.activation_checkpointing=0.0") > 10 * base  # every block's internals kept
    assert activations("parallel.sequence_parallel=false") > base  # norms and block inputs no longer split
    assert activations("train.micro_batch=2") == pytest.approx(2 * base, rel=1e-6)
    skyreels = estimate_memory(cluster("skyreels_i2v_32gpu.yaml"), 32)
    no_cfg_training = estimate_memory(cluster("skyreels_i2v_32gpu.yaml", "train.cfg_training=false"), 32)
    assert skyreels["activations"] == pytest.approx(2 * no_cfg_training["activations"], rel=1e-6)  # cond + uncond


# ---------------------------------------------------------------------------------------------
# launch scripts

@pytest.mark.parametrize("script", ["launch_torchrun.sh", "slurm_hunyuan_t2v_64gpu.sbatch"])
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", example(script)], check=True)


def test_launcher_dry_run_builds_the_torchrun_command():
    env = {**os.environ, "DRY_RUN": "1", "NNODES": "8", "NODE_RANK": "3", "MASTER_ADDR": "node0",
           "MASTER_PORT": "29511"}
    out = subprocess.run(["bash", example("launch_torchrun.sh"), "examples/hunyuan_t2v_64gpu.yaml", "train.lr=2e-5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "torchrun"
    for arg in ("--nnodes=8", "--node_rank=3", "--nproc_per_node=8", "--rdzv_backend=c10d",
                "--rdzv_endpoint=node0:29511"):
        assert arg in out
    module = out.index("-m")
    assert out[module:] == ["-m", "dancegrpo_hpc.train", "examples/hunyuan_t2v_64gpu.yaml", "train.lr=2e-5",
                            "--resume", "auto"]


def test_launcher_needs_a_config():
    result = subprocess.run(["bash", example("launch_torchrun.sh")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_sbatch_dry_run_takes_the_master_from_scontrol(tmp_path):
    fake = tmp_path / "scontrol"  # stands in for Slurm: `scontrol show hostnames` lists the job's nodes
    fake.write_text("#!/bin/sh\nprintf 'gpu-a01\\ngpu-a02\\n'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "DRY_RUN": "1", "SLURM_NNODES": "8",
           "SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": ROOT}
    env.pop("MASTER_ADDR", None)
    out = subprocess.run(["bash", example("slurm_hunyuan_t2v_64gpu.sbatch"), "output_dir=runs/t2v"], cwd=str(tmp_path),
                         env=env, capture_output=True, text=True, check=True).stdout
    srun, node0 = out.split("node 0 runs:")
    assert srun.startswith("srun --nodes=8 --ntasks-per-node=1") and "launch_torchrun.sh" in srun
    assert "SLURM_NODEID" in srun and "examples/hunyuan_t2v_64gpu.yaml output_dir=runs/t2v" in srun
    for arg in ("--nnodes=8", "--node_rank=0", "--nproc_per_node=8", "--rdzv_endpoint=gpu-a01:29500",
                "--rdzv_id=4242", "--resume auto"):
        assert arg in node0
    with open(example("slurm_hunyuan_t2v_64gpu.sbatch")) as f:
        directives = f.read()
    assert "#SBATCH --nodes=8" in directives and "#SBATCH --gpus-per-node=8" in directives
    assert "#SBATCH --requeue" in directives


@pytest.mark.parametrize("override, words", [
    ("data.image_loader=opencv", "data.image_loader"),
    ("data.vae_tile_size=100", "data.vae_tile_size must be a multiple of 8"),
    ("data.vae_tile_stride=320", "data.vae_tile_stride=320 must be <= data.vae_tile_size=256"),
    ("data.vae_tile_stride=0", "data.vae_tile_stride must be an integer >= 8"),
])
def test_real_data_loader_options_are_checked(override, words):
    with pytest.raises(InputError, match=re.escape(words)):
        load_config(example("hunyuan_t2v_64gpu.yaml"), [override], paths=False)


def test_local_fp8_recipes_are_accepted_and_te_ones_named():
    for recipe in ("current", "delayed", "rowwise"):
        assert load_config(None, [f"model.fp8={recipe}"]).model.fp8 == recipe
    with pytest.raises(InputError) as err:
        load_config(None, ["model.fp8=block"])
    assert str(err.value) == ("config: model.fp8='block' is not a recipe of model.layer_spec=local (its recipes: current, "
                              "delayed, rowwise); 'block' is a recipe of model.layer_spec=transformer_engine; or set "
                              "model.fp8=null")
