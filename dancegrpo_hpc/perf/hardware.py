"""GPU presets of the performance model: peak compute, memory and link bandwidths.

Every figure comes from NVIDIA's published specifications (the vendor datasheet row
is named next to each number). Datasheets quote Tensor Core FLOP/s "with sparsity";
the dense figures used here are half of those. NVLink is quoted as the total
bidirectional bandwidth per GPU; a collective's bytes leave a GPU in one direction,
so the model uses half of it. InfiniBand is not part of the GPU datasheet: it is the
DGX H100 / HGX reference node's one ConnectX-7 NDR port of 400 Gb/s per GPU
(50 GB/s per direction), which H800 clusters (e.g. DeepSeek-V3's) also use.

H100 SXM, H800 SXM and H200 SXM share their Tensor Core peaks, so an efficiency measured
on one of them carries over to the others for compute-bound work (GEMMs, attention);
memory-bound work scales with hbm_bytes_s (perf/calibration.py applies both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from ..checks import require

TERA, GIGA, GIB = 1e12, 1e9, 2**30


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16_flops: float  # dense BF16 Tensor Core peak, FLOP/s
    tf32_flops: float  # dense TF32 Tensor Core peak, FLOP/s (float32 models)
    fp8_flops: float  # dense FP8 Tensor Core peak, FLOP/s
    hbm_bytes_s: float  # GPU memory bandwidth, bytes/s
    memory_bytes: float  # GPU memory, bytes ("80GB" is 80 GiB of HBM3; nvidia-smi shows 81,559 MiB)
    nvlink_bytes_s: float  # NVLink, total bidirectional per GPU (datasheet convention), bytes/s
    ib_bytes_s: float  # InfiniBand per GPU, one direction, bytes/s
    gpus_per_node: int = 8

    @property
    def nvlink_one_way(self) -> float:
        return self.nvlink_bytes_s / 2


HARDWARE: Dict[str, Hardware] = {
    # NVIDIA H100 Tensor Core GPU datasheet, "H100 SXM" column:
    #   BF16 Tensor Core 1,979 teraFLOPS*, FP8 Tensor Core 3,958 teraFLOPS*, TF32 Tensor Core 989
    #   teraFLOPS* (*with sparsity; dense = half: 989.4 / 1,978.9 / 494.7), GPU memory 80 GB, GPU
    #   memory bandwidth 3.35 TB/s, interconnect "NVLink: 900GB/s"; networking: DGX H100
    #   datasheet, 8x single-port ConnectX-7 400 Gb/s (one per GPU).
    "h100": Hardware("H100 SXM", bf16_flops=989.4 * TERA, tf32_flops=494.7 * TERA, fp8_flops=1978.9 * TERA,
                     hbm_bytes_s=3350 * GIGA, memory_bytes=80 * GIB, nvlink_bytes_s=900 * GIGA, ib_bytes_s=50 * GIGA),
    # NVIDIA H800 Tensor Core GPU datasheet, "H800 SXM" column: the same Tensor Core figures
    #   (BF16 1,979* / FP8 3,958* / TF32 989* teraFLOPS with sparsity), 80 GB at 3.35 TB/s, but
    #   interconnect "NVLink: 400GB/s" (export variant: 44% of H100's 900 GB/s); same IB node.
    "h800": Hardware("H800 SXM", bf16_flops=989.4 * TERA, tf32_flops=494.7 * TERA, fp8_flops=1978.9 * TERA,
                     hbm_bytes_s=3350 * GIGA, memory_bytes=80 * GIB, nvlink_bytes_s=400 * GIGA, ib_bytes_s=50 * GIGA),
    # NVIDIA H200 Tensor Core GPU datasheet, "H200 SXM" column: the same Tensor Core figures as
    #   H100 SXM (BF16 1,979* / FP8 3,958* / TF32 989* teraFLOPS with sparsity), GPU memory 141 GB
    #   (HBM3e) at 4.8 TB/s, "NVLink: 900GB/s"; DGX H200: 8x ConnectX-7 400 Gb/s, as DGX H100.
    "h200": Hardware("H200 SXM", bf16_flops=989.4 * TERA, tf32_flops=494.7 * TERA, fp8_flops=1978.9 * TERA,
                     hbm_bytes_s=4800 * GIGA, memory_bytes=141 * GIB, nvlink_bytes_s=900 * GIGA, ib_bytes_s=50 * GIGA),
}


def hardware(name: str) -> Hardware:
    require(name in HARDWARE, f"perf model: unknown hardware {name!r}; choose one of {', '.join(sorted(HARDWARE))}")
    return HARDWARE[name]


def detect(device_name: str) -> Optional[str]:
    """The preset of a CUDA device name (torch.cuda.get_device_name), or None. Only the SXM
    parts match: PCIe and NVL boards have lower clocks and peaks (H100 PCIe 756 dense BF16
    TFLOP/s), so an MFU against the SXM peak would be wrong for them."""
    name = device_name.upper()
    if any(tag in name for tag in ("PCIE", "NVL")):
        return None
    for key in ("h100", "h200", "h800"):
        if key.upper() in name.split() or f"NVIDIA {key.upper()}" in name:
            return key
    return None


__all__ = ["Hardware", "HARDWARE", "hardware", "detect"]
