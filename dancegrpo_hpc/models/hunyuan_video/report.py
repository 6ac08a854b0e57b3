"""Parameter count and per-rank parameter memory of a config, from a model built on
the meta device (no memory, no weights).

    python -m dancegrpo_hpc.models.hunyuan_video.report --preset hunyuan-t2v-13b --tp 8
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict

import torch

from ...checks import require
from .config import preset
from .model import HunyuanVideoDiT
from .weights import plan


def parameter_report(config, tp: int = 1, dtype: torch.dtype = torch.bfloat16, adaln: str = "replicated") -> Dict:
    """total parameters, and per TP rank: parameters and bytes (TP-split tensors are
    the weight plan's sliced pieces; everything else is replicated)."""
    require(config.num_attention_heads % tp == 0, f"parameter report: heads ({config.num_attention_heads}) must divide by tp={tp}")
    model = HunyuanVideoDiT(config, device="meta", dtype=dtype, adaln=adaln)
    pieces = plan(model, 0)
    total = per_rank = 0
    for name, param in model.named_parameters():
        total += param.numel()
        split = any(pc.dim is not None for pc in pieces[name][0])
        per_rank += param.numel() // tp if split else param.numel()
    size = torch.tensor([], dtype=dtype).element_size()
    return {"variant": config.variant, "tp": tp, "dtype": str(dtype).replace("torch.", ""), "adaln": adaln,
            "parameters": total, "parameters_per_rank": per_rank, "bytes_per_rank": per_rank * size,
            "gib_per_rank": per_rank * size / 2**30}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="hunyuan-t2v-13b")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--adaln", default="replicated", choices=["replicated", "column"])
    args = parser.parse_args(argv)
    for tp in args.tp:
        r = parameter_report(preset(args.preset), tp, adaln=args.adaln)
        print(f"{r['variant']}: {r['parameters'] / 1e9:.3f}B parameters; TP={tp}: {r['parameters_per_rank'] / 1e9:.3f}B "
              f"per rank = {r['gib_per_rank']:.2f} GiB in {r['dtype']} (AdaLN {args.adaln})")
    print(json.dumps(parameter_report(preset(args.preset), args.tp[-1], adaln=args.adaln)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
