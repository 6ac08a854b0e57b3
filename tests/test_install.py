"""The package as a user installs it: in a fresh venv (no system site-packages) that holds
only setup.py's install dependencies and what they require in turn (no extras), every module
imports, the quick-start trainer runs, and what needs an extra stops with one line naming it.

The venv is not filled from the network: each distribution of the closure is linked in
from this environment, exactly the files its RECORD lists (a directory whole when no other
distribution has files in it), so a package that is installed here but not required stays
out of it."""

import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from script_utils import load_script

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dancegrpo_hpc"


def setup_value(name: str):
    """A value setup.py passes to setup() (loaded as a module, setup.py does not call setup())."""
    return getattr(load_script("setup.py"), name)


def package_modules():
    """Every module of the package, from its files."""
    names = []
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(n for n in names if n != PACKAGE)


def dependency_closure(requirements):
    """canonical name -> installed Distribution for the requirements and, recursively, what
    each requires (markers evaluated here, extras only where a requirement names them)."""
    found, extras_seen = {}, defaultdict(set)
    todo = [Requirement(text) for text in requirements if not Requirement(text).marker
            or Requirement(text).marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{req} is required but not installed in this environment") from None
        assert req.specifier.contains(dist.version, prereleases=True), f"{req}: installed {dist.version}"
        if name in found and set(req.extras) <= extras_seen[name]:
            continue
        found[name] = dist
        extras_seen[name] |= set(req.extras)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ["", *extras_seen[name]]):
                sub.marker = None  # evaluated here, for the requiring distribution's extras
                todo.append(sub)
    return found


def _site_files(dist):
    """(site directory, relative parts) of each file a distribution installed into its site
    directory (scripts and data outside it, '../../bin/...', are left out)."""
    base = Path(dist.locate_file("")).resolve()
    return base, [f.parts for f in dist.files or [] if f.parts and f.parts[0] != ".."]


def link_distributions(dists, site: Path) -> int:
    """Links each distribution's files into `site`; returns how many links were made."""
    owners = defaultdict(set)  # (site dir, directory parts) -> distributions with files under it
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        base, files = _site_files(dist)
        for parts in files:
            for k in range(1, len(parts)):
                owners[base, parts[:k]].add(name)
    links = 0
    for name, dist in dists.items():
        base, files = _site_files(dist)
        for parts in files:
            # the shortest prefix that is this distribution's alone (shared namespace folders such
            # as nvidia/ or google/ are made here, and only this distribution's entries linked)
            k = next(k for k in range(1, len(parts) + 1) if k == len(parts) or owners[base, parts[:k]] == {name})
            target = site.joinpath(*parts[:k])
            if target.is_symlink() or not (base.joinpath(*parts[:k])).exists():
                continue  # linked already, or listed but absent (e.g. a .pyc never written)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(base.joinpath(*parts[:k]))
            links += 1
    return links


# Runs in the fresh venv: imports every module (argv[2], a JSON list: pkgutil's walk skips
# folders without an __init__.py), trains the toy world for one tiny iteration with every
# output on, then calls what needs an extra.
DRIVER = textwrap.dedent(r"""
    import importlib, importlib.util, json, os, sys, traceback
    out = {"failures": {}, "absent": {}, "extras": {}, "imported": []}
    for name in json.loads(sys.argv[2]):
        try:
            module = importlib.import_module(name)
            out["imported"].append(module.__name__)
        except BaseException as e:
            out["failures"][name] = traceback.format_exception_only(type(e), e)[-1].strip()
    out["absent"] = {m: importlib.util.find_spec(m) is None for m in ("diffusers", "transformers", "pytest")}
    out["site"] = [p for p in sys.path if "site-packages" in p]

    from dancegrpo_hpc.train import main
    run_dir = sys.argv[1]
    out["train_rc"] = main(["examples/toy_t2v.yaml", f"output_dir={run_dir}", "train.iterations=1",
                            "rollout.prompts_per_iteration=2", "rollout.group_size=2", "rollout.micro_batch=0",
                            "sampling.steps=3", "data.eval_prompts=2", "eval.samples_per_prompt=1"])

    from dancegrpo_hpc.checks import InputError
    def error_of(call):
        try:
            call()
        except InputError as e:
            return str(e)
        except BaseException as e:
            return f"not an InputError: {type(e).__name__}: {e}"
        return "no error"
    from dancegrpo_hpc.config import load_config
    from dancegrpo_hpc.data.real_world import PromptWorld
    from dancegrpo_hpc.data.reference_images import load_video_vae
    from dancegrpo_hpc.rewards.loading import import_transformers
    vae = os.path.join(run_dir, "vae")
    os.makedirs(vae)
    open(os.path.join(vae, "config.json"), "w").write("{}")
    out["extras"]["prompt_world"] = error_of(
        lambda: PromptWorld(load_config("examples/tiny_t2v_real.yaml", paths=False)))
    out["extras"]["load_video_vae"] = error_of(lambda: load_video_vae(vae))
    out["extras"]["reward_model"] = error_of(lambda: import_transformers("rewards[0] clip_score"))
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def install_only_venv(tmp_path_factory):
    """A venv without system site-packages holding the install dependency closure and this
    package (its source folder with the built _C extension)."""
    where = tmp_path_factory.mktemp("install_only")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    closure = dependency_closure(setup_value("INSTALL_REQUIRES"))
    assert link_distributions(closure, site) > len(closure) - 1
    built = importlib.util.find_spec(f"{PACKAGE}._C")
    assert built is not None and Path(built.origin).parent == ROOT / PACKAGE, (
        f"the _C extension is built in place by `pip install -e .`; found {built and built.origin}")
    (site / PACKAGE).symlink_to(ROOT / PACKAGE)
    return python, closure, where


def test_a_wheel_would_hold_every_module_and_the_toy_checkpoint():
    """setup.py's packages cover every folder of modules (dancegrpo_hpc/distributed has no
    __init__.py: find_packages dropped it), its package data every other tracked file."""
    packages, data = setup_value("PACKAGES"), setup_value("PACKAGE_DATA")
    assert {m.rpartition(".")[0] for m in package_modules() if m.count(".")} <= set(packages)
    tracked = subprocess.run(["git", "ls-files", PACKAGE], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for path in (p for p in tracked if not p.endswith(".py")):
        owner = max((p for p in data if path.startswith(p.replace(".", "/") + "/")), key=len, default=None)
        assert owner is not None, f"{path} is in no package of PACKAGE_DATA"
        inside = path[len(owner) + 1:]
        assert any(fnmatch.fnmatch(inside, pattern) for pattern in data[owner]), path


def test_closure_excludes_extras_and_holds_what_the_package_imports():
    closure = dependency_closure(setup_value("INSTALL_REQUIRES"))
    assert {"torch", "numpy", "megatron-core", "pyyaml", "tqdm", "pillow", "matplotlib", "tensorboard"} <= set(closure)
    assert not {"diffusers", "transformers", "pytest"} & set(closure)  # extras stay out


@pytest.mark.slow
def test_every_module_imports_with_only_the_install_dependencies(install_only_venv):
    python, closure, where = install_only_venv
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = "2"
    modules = package_modules()
    out = subprocess.run([str(python), "-I", "-c", DRIVER, str(where / "run"), json.dumps(modules)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    # the venv is the one built here, and it lacks what only the extras install
    assert result["site"] and all(str(where) in p for p in result["site"]), result["site"]
    assert result["absent"] == {"diffusers": True, "transformers": True, "pytest": True}
    assert result["failures"] == {}
    assert result["imported"] == modules and f"{PACKAGE}.outputs.progress" in modules and len(modules) > 90
    # the quick start's trainer, every output written (progress bar, TensorBoard, plot, GIF)
    assert result["train_rc"] == 0, out.stderr[-3000:]
    for name in ("metrics.jsonl", "summary.json", "reward_curve.png", "samples.gif", "tensorboard"):
        assert (where / "run" / name).exists(), name
    # what needs the `real` / `rewards` extra: one line naming it
    hint = 'pip install --no-build-isolation -e ".[real]"'
    assert result["extras"]["prompt_world"] == (
        "config: data.source=prompts: needs the `diffusers` package; install the `real` extra: " + hint)
    assert result["extras"]["load_video_vae"].startswith("load_video_vae: needs the `diffusers` package (No module")
    assert result["extras"]["load_video_vae"].endswith(hint)
    assert result["extras"]["reward_model"].startswith("rewards[0] clip_score: needs the `transformers` package")
    assert result["extras"]["reward_model"].endswith('pip install --no-build-isolation -e ".[rewards]"')


@pytest.mark.slow
def test_make_tiny_real_names_the_real_extra(install_only_venv, tmp_path):
    python, _, _ = install_only_venv
    out = subprocess.run([str(python), "-I", "tools/make_tiny_real.py", "--out", str(tmp_path / "tiny")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == ('make_tiny_real: needs the `diffusers` package; install the `real` extra: '
                                  'pip install --no-build-isolation -e ".[real]"')
    assert not (tmp_path / "tiny").exists()
