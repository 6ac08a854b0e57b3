"""Installs torch==2.13.0 into the running environment, refusing a CUDA build on a
machine without an NVIDIA GPU (PyPI's default Linux torch wheel pulls several GB
of CUDA libraries). Called by tools/_env.sh only when no torch is importable."""

import json
import shutil
import subprocess
import sys
import tempfile

PIN = "torch==2.13.0"


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def planned_install(spec: str) -> list:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report.name, spec])
        return json.load(open(report.name)).get("install", [])


def cuda_in_plan(plan: list) -> list:
    """What in a pip install plan (`--report` "install" list) marks a CUDA build of
    torch: nvidia-* libraries, triton, or a torch whose version is not +cpu."""
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in plan}
    found = sorted(n for n in versions if n.startswith("nvidia-") or n == "triton")
    if "torch" in versions and "+cpu" not in versions["torch"]:
        found.insert(0, f"torch {versions['torch']}")
    return found


def main() -> int:
    if not has_nvidia_gpu():
        cuda = cuda_in_plan(planned_install(PIN))
        if cuda:
            print(
                f"install_torch: no NVIDIA GPU here, but `pip install {PIN}` would install a CUDA build "
                f"({', '.join(cuda)}). Install the CPU wheel first, e.g. "
                f"`pip install {PIN} --index-url https://download.pytorch.org/whl/cpu`, then re-run.",
                file=sys.stderr,
            )
            return 1
    return subprocess.call([sys.executable, "-m", "pip", "install", PIN])


if __name__ == "__main__":
    sys.exit(main())
