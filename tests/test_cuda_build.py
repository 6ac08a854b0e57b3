"""The CUDA sources compile here, where nvcc exists but no GPU does.

sde_cuda.cu holds the raw kernels (no torch headers) and must pass `nvcc -c` for
the GPUs we target. The torch glue (ops_cuda.cpp) needs a CUDA build of torch's
headers; set DANCEGRPO_CUDA_TORCH_INCLUDE to such an include folder to check it.
"""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_nvcc_compiles_the_kernels(tmp_path):
    obj = tmp_path / "sde_cuda.o"
    cmd = [NVCC, "-std=c++20", "-O3", "-c", os.path.join(ROOT, "csrc/cuda/sde_cuda.cu"), "-o", str(obj),
           "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert obj.stat().st_size > 0
    assert "spill stores" in out.stderr and " 0 bytes spill stores" in out.stderr
    assert not [line for line in out.stderr.splitlines() if "bytes spill stores" in line and " 0 bytes spill stores" not in line]


@pytest.mark.skipif(not os.environ.get("DANCEGRPO_CUDA_TORCH_INCLUDE"), reason="DANCEGRPO_CUDA_TORCH_INCLUDE not set "
                    "(a CUDA build of torch's include folder is needed to compile the torch glue)")
def test_cuda_glue_compiles_against_cuda_torch_headers():
    inc = os.environ["DANCEGRPO_CUDA_TORCH_INCLUDE"]
    homes = [os.environ.get("CUDA_HOME"), os.path.dirname(os.path.dirname(os.path.realpath(NVCC or ""))), "/usr/local/cuda"]
    cuda_inc = next((os.path.join(h, "include") for h in homes if h and os.path.exists(os.path.join(h, "include", "cuda_runtime.h"))), None)
    assert cuda_inc, "CUDA headers (cuda_runtime.h) not found; set CUDA_HOME"
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-D_GLIBCXX_USE_CXX11_ABI=1", f"-I{inc}",
           f"-I{inc}/torch/csrc/api/include", f"-I{cuda_inc}", os.path.join(ROOT, "csrc/cuda/ops_cuda.cpp")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
