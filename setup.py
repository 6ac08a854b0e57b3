"""Build and install dancegrpo_hpc; csrc/ is compiled by CMake into dancegrpo_hpc._C.

Build against the torch already installed (a CPU wheel here, a CUDA build on a
GPU cluster): `pip install --no-build-isolation -e .`. Build isolation would
install a fresh torch (the multi-GB CUDA wheel) just to compile against it.
Environment: DANCEGRPO_CUDA=0/1 forces the CUDA kernels off/on (default: on when
torch has CUDA and nvcc is found); CMAKE_BUILD_PARALLEL_LEVEL sets build jobs.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _torch():
    try:
        import torch
    except ImportError:
        sys.exit(
            "dancegrpo_hpc: torch must be installed before building the fused kernels; "
            "install torch, then `pip install --no-build-isolation -e .`"
        )
    return torch


def _want_cuda(torch) -> bool:
    forced = os.environ.get("DANCEGRPO_CUDA")
    if forced is not None:
        return forced not in ("0", "", "false", "OFF", "off")
    return torch.version.cuda is not None and shutil.which("nvcc") is not None


class CMakeBuild(build_ext):
    """Configures and builds csrc/ with CMake in a persistent build/ folder, so a
    second install with unchanged sources recompiles nothing."""

    def build_extension(self, ext):
        torch = _torch()
        cuda = _want_cuda(torch)
        tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-{'cuda' if cuda else 'cpu'}"
        build_dir = ROOT / "build" / "cmake" / tag.replace("+", "_")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DDANCEGRPO_CUDA={'ON' if cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args.append("-GNinja")
        cmake = shutil.which("cmake")
        if cmake is None:
            sys.exit("dancegrpo_hpc: cmake not found; install it (`pip install cmake ninja`) and build again")
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs])


# Everything the package imports at module level, and what the quick start runs (the toy world,
# its outputs): tests/test_install.py imports every module in a venv holding only these.
INSTALL_REQUIRES = [
    "torch>=2.4", "numpy", "megatron-core>=0.16", "safetensors",
    "pyyaml",       # configs (dancegrpo_hpc/config.py)
    "tqdm",         # the console progress bar (dancegrpo_hpc/outputs/progress.py)
    "tensorboard",  # metrics events
    "matplotlib",   # reward_curve.png
    "pillow",       # samples.gif, reference images
]
# The real-data path (data.source: prompts; tools/make_tiny_real.py): diffusers' HunyuanVideo VAE and
# the transformers text encoders. An extra, not a core dependency: the toy quick start needs neither,
# and they pull in a large tree (huggingface-hub, tokenizers, regex, ...). A missing one is reported in
# one line naming this extra (dancegrpo_hpc/extras.py).
REAL = ["diffusers", "transformers>=5"]
EXTRAS_REQUIRE = {
    "gpu": ["transformer-engine[pytorch]", "flash-attn", "xformers", "nvidia-dali-cuda120"],
    "real": REAL,
    # Real reward models (dancegrpo_hpc/rewards): CLIP, PickScore, HPS-v2.1 and VideoAlign all run
    # on transformers. No open-clip-torch: HPS's open_clip weights are converted to transformers'
    # CLIPModel at load time, since open_clip needs torchvision (no CPU build on our machines).
    "rewards": ["transformers>=5", "safetensors"],
    # Tests of the image / video loaders (dancegrpo_hpc/data/dali_loading.py): DALI's CPU pipelines
    # run without a GPU, checked against the PIL / PyAV reference; DALI ships Linux wheels only.
    # peft: the LoRA parity tests (tests/test_lora.py) check our adapters against diffusers + peft.
    "dev": ["pytest>=7", "pytest-timeout", *REAL, "peft", "av", "nvidia-dali-cuda120; platform_system == 'Linux'"],
}


# Namespace packages too: folders without an __init__.py (dancegrpo_hpc/distributed) are
# packages of ours all the same, and find_packages would leave them out of a wheel.
PACKAGES = find_namespace_packages(include=["dancegrpo_hpc", "dancegrpo_hpc.*"],
                                   exclude=["*.__pycache__", "dancegrpo_hpc.models.toy.checkpoint"])
# the committed toy checkpoint the quick start samples from (data of dancegrpo_hpc.models.toy)
PACKAGE_DATA = {"dancegrpo_hpc.models.toy": ["checkpoint/*.json", "checkpoint/*.safetensors"]}

if __name__ == "__main__":  # pip runs this file as __main__; tests read the lists above without building
    setup(
        name="dancegrpo-hpc",
        version="0.1.0",
        description="High-performance GRPO alignment of video flow-matching models (DanceGRPO, Euphonium)",
        packages=PACKAGES,
        package_data=PACKAGE_DATA,
        python_requires=">=3.10",
        ext_modules=[Extension("dancegrpo_hpc._C", sources=[])],
        cmdclass={"build_ext": CMakeBuild},
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        entry_points={"console_scripts": ["dancegrpo-hpc=dancegrpo_hpc.cli:main"]},
        zip_safe=False,
    )
