"""The README's library example runs as written."""

import argparse
import os
import re
import shlex
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"## Using the library\s+```python\n(.*?)```", text, re.S).group(1)
    batch = 24
    namespace = {
        "model_fn": lambda x, sigma, step: -x,  # any velocity model
        "noise": torch.randn(batch, 4, 3, 8, 8),
        "rewards": torch.randn(batch),
        "i": 5,
    }
    namespace["model_out"] = torch.randn(batch, 4, 3, 8, 8, requires_grad=True)
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["traj"].latents.shape == (batch, 17, 4, 3, 8, 8)
    namespace["loss"].backward()
    assert namespace["model_out"].grad is not None and torch.isfinite(namespace["loss"])


def _readme():
    return open(os.path.join(ROOT, "README.md")).read()


def _commands(block):
    """The command lines of a shell block: comments and blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def _quick_start_commands():
    return _commands(re.search(r"## Quick start\n.*?```bash\n(.*?)```", _readme(), re.S).group(1))


def _stub_tree(tmp_path, scripts):
    """A copy of the repository's layout holding the given scripts (path -> text)."""
    for relative, text in scripts.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_ci_runs_the_readme_quick_start_commands_in_readme_order(tmp_path):
    readme = _quick_start_commands()
    assert readme == ["bash tools/quickstart.sh", "bash tools/test.sh"]
    # .ci/run in a tree whose tools only log that they ran
    log = tmp_path / "ran.log"
    stub = f'echo "bash $0 $*" >> {log}\n'
    tree = _stub_tree(tmp_path / "repo", {".ci/run": open(os.path.join(ROOT, ".ci", "run")).read(),
                                          "tools/quickstart.sh": stub, "tools/test.sh": stub})
    out = subprocess.run(["bash", str(tree / ".ci" / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [line.strip() for line in log.read_text().splitlines()] == readme

    # a clone that already has a .venv would let the quick start reuse it: refused before anything runs
    log.unlink()
    (tree / ".venv").mkdir()
    out = subprocess.run(["bash", str(tree / ".ci" / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "clean clone" in out.stderr and not log.exists()


def test_quickstart_passes_its_arguments_in_any_order_and_ends_with_the_path_hint(tmp_path):
    """tools/quickstart.sh with _env.sh replaced by a stub (no venv set-up): the trainer gets
    the arguments after the config, and a successful run ends by saying how to get
    dancegrpo-hpc on PATH, as the README says."""
    from dancegrpo_hpc.train import add_arguments, parse_args

    argv_log = tmp_path / "argv"
    env_stub = (f'ROOT="$(cd "$(dirname "${{BASH_SOURCE[0]}}")/.." && pwd)"\nVENV=/opt/venv\n'
                f'PY="$ROOT/fake_python"\n')
    tree = _stub_tree(tmp_path / "repo", {
        "tools/quickstart.sh": open(os.path.join(ROOT, "tools", "quickstart.sh")).read(),
        "tools/_env.sh": env_stub,
        "fake_python": f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_log}\nexit "${{FAKE_STATUS:-0}}"\n'})
    (tree / "fake_python").chmod(0o755)
    args = ["--resume", "auto", "train.iterations=13"]
    out = subprocess.run(["bash", "tools/quickstart.sh", *args], cwd=tree, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = argv_log.read_text().splitlines()
    assert argv[:2] == ["-m", "dancegrpo_hpc.train"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = parse_args(parser, argv[2:])
    assert (parsed.config, parsed.overrides, parsed.resume) == (
        "examples/toy_t2v.yaml", ["output_dir=runs/quickstart", "train.iterations=13"], "auto")
    assert "`source /opt/venv/bin/activate`" in out.stdout and "/opt/venv/bin/dancegrpo-hpc" in out.stdout
    assert "source .venv/bin/activate" in _readme() and ".venv/bin/dancegrpo-hpc" in _readme()

    failed = subprocess.run(["bash", "tools/quickstart.sh"], cwd=tree, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FAKE_STATUS": "2"})
    assert failed.returncode == 2 and "activate" not in failed.stdout  # an error stays the last line


def test_readme_validate_command_works_as_written(capsys):
    """The README's cluster validate line checks the layout on a machine without the cluster's
    files; without --no-check-paths, the path error names that flag."""
    from dancegrpo_hpc.cli import main

    lines = [line for line in _commands(_readme()) if line.startswith("dancegrpo-hpc validate")]
    assert lines and all("--no-check-paths" in line for line in lines)
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0, line
        assert capsys.readouterr().out.startswith("examples/hunyuan_t2v_64gpu.yaml: valid")
    config = shlex.split(lines[0])[2]
    if os.path.exists("/data/HunyuanVideo/transformer"):
        pytest.skip("this machine has the example's cluster paths")
    assert main(["validate", config, "--world-size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.path '/data/HunyuanVideo/transformer'" in err[0] and "--no-check-paths" in err[0]


def test_readme_names_the_real_extra_as_the_one_line_errors_do():
    """The real-data path's extra: declared in setup.py (diffusers + transformers, also in dev),
    and the README's install command is the one the errors print."""
    import ast

    from dancegrpo_hpc.extras import install_hint

    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    values = {node.targets[0].id: node.value for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    real = ast.literal_eval(values["REAL"])
    assert {"diffusers", "transformers"} <= {r.split(">")[0].split("=")[0] for r in real}
    extras = values["EXTRAS_REQUIRE"]
    keys = [ast.literal_eval(k) for k in extras.keys]
    real_value, dev_value = extras.values[keys.index("real")], extras.values[keys.index("dev")]
    assert isinstance(real_value, ast.Name) and real_value.id == "REAL"
    assert any(isinstance(e, ast.Starred) and e.value.id == "REAL" for e in dev_value.elts)
    assert install_hint("real") in _readme()
