"""Encodes a prompt file with a model family's text encoders into an embedding cache
(dancegrpo_hpc/data/embedding_cache.py) that the trainer reads (data.embeddings).

    python tools/precompute_embeddings.py --prompts prompts.csv --text-encoders /ckpt/HunyuanVideo --out /data/emb
    python tools/precompute_embeddings.py --family flux --prompts p.txt --text-encoders /ckpt/FLUX.1-dev --out /data/f
    torchrun --nproc-per-node 8 tools/precompute_embeddings.py --prompts prompts.txt \\
        --llama /ckpt/llava-llama-3-8b --clip /ckpt/clip-vit-large-patch14 --out /data/emb --device cuda

The family (--family, default hunyuan_video: LLaVA-Llama3 + CLIP-L; flux: CLIP-L + T5; sd3:
CLIP-L + CLIP-G + T5) decides the encoders, their folders in a diffusers root and the
tensors cached (models/family.py `DataParts`); the cache records it, and a run of another
family refuses the cache.

Rank r of W encodes prompts r, r+W, ... (rank 0 also the empty prompt, CFG's negative) and
writes its own shards; after a barrier rank 0 writes index.json. On CPU the ranks talk over
gloo, on GPU over nccl (one GPU per rank, LOCAL_RANK). Without torchrun it runs as one rank.
The output folder must be shared by all ranks (one node, or a shared filesystem).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dancegrpo_hpc.checks import InputError, require  # noqa: E402

ENCODER_FLAGS = {"llama": "LLaVA-Llama3 (hunyuan_video)", "clip": "CLIP-L (every family)",
                 "clip_g": "CLIP-G (sd3)", "t5": "T5-XXL (flux, sd3)"}
OWN_FILES = re.compile(r"^rank\d{5}(-\d{5}\.safetensors|\.part\.json)(\.tmp)?$|^index\.json(\.tmp)?$")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="prompt file: .txt, .jsonl or .csv (dancegrpo_hpc.data.prompts)")
    p.add_argument("--field", default=None, help="the prompt's field / column in .jsonl / .csv (default: prompt)")
    p.add_argument("--family", default="hunyuan_video", help="model family whose text encoders to run "
                                                             "(models/family.py; default hunyuan_video)")
    p.add_argument("--text-encoders", default=None, help="the family's diffusers root: text_encoder/, tokenizer/, "
                                                         "text_encoder_2/, tokenizer_2/, ...")
    for key, what in ENCODER_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, default=None,
                       help=f"{what} folder (model + tokenizer); overrides the root's")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--shard-size", type=int, default=64, help="prompts per shard (64 x 256 x 4096 bf16 = 128 MiB)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per encoder forward")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="encoder and cache dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU LOCAL_RANK of each rank")
    p.add_argument("--overwrite", action="store_true", help="replace a finished cache already in --out")
    return p.parse_args(argv)


def folders(args):
    """The per-encoder folder overrides given (--llama, --clip, ...)."""
    return {k: getattr(args, k) for k in ENCODER_FLAGS if getattr(args, k) is not None}


def check(args):
    """Everything that can fail on user input, before any process group or model; returns
    (prompts, dtype, the family's data parts)."""
    from dancegrpo_hpc.data.prompts import load_prompts
    from dancegrpo_hpc.models.family import family_names, get_family
    from dancegrpo_hpc.models.text_encoders import resolve_dtype

    require(args.family in family_names(), f"--family {args.family!r} is not a model family; choose one of "
                                           f"{', '.join(family_names())}")
    require(args.shard_size > 0, f"--shard-size must be a positive integer; got {args.shard_size}")
    require(args.batch_size > 0, f"--batch-size must be a positive integer; got {args.batch_size}")
    prompts = load_prompts(args.prompts, field=args.field, check_images=False).prompts
    prompts = list(dict.fromkeys(prompts))  # I2V files may repeat a prompt with other images: encode it once
    parts = get_family(args.family).data()
    parts.check_text_encoders(args.text_encoders, folders(args), "--text-encoders")  # checks the folders; loads nothing
    if args.device == "cuda":
        import torch

        require(torch.cuda.is_available(), "--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    dtype = resolve_dtype(args.dtype, args.device)
    require(not os.path.exists(args.out) or os.path.isdir(args.out), f"--out {args.out!r} is a file; give a folder")
    require(args.overwrite or not os.path.exists(os.path.join(args.out, "index.json")),
            f"--out {args.out!r} already holds an embedding cache; pass --overwrite or choose another folder")
    return prompts, dtype, parts


def run(args):
    import torch
    import torch.distributed as dist

    from dancegrpo_hpc.data.embedding_cache import CacheWriter, finalize

    start = time.perf_counter()
    prompts, dtype, parts = check(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = args.device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    try:
        if rank == 0:  # files of an unfinished or replaced run: never mixed into this one
            os.makedirs(args.out, exist_ok=True)
            for name in os.listdir(args.out):
                if OWN_FILES.match(name):
                    os.remove(os.path.join(args.out, name))
        if world > 1:
            dist.barrier()
        mine = prompts[rank::world]
        if rank == 0:
            mine = [parts.negative_prompt] + [p for p in mine if p != parts.negative_prompt]
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-rank weight-loading bars; this tool prints its own progress
        encoders = parts.load_text_encoders(args.text_encoders, folders(args), device=device, dtype=dtype,
                                            field="--text-encoders")
        writer = CacheWriter(args.out, f"rank{rank:05d}", args.shard_size, dtype, parts.text_tensors,
                             parts.mask_tensors)
        truncated = encoders.truncation(prompts) if rank == 0 else None
        report, began = max(len(mine) // 10, 1), time.perf_counter()
        for i in range(0, len(mine), args.batch_size):
            batch = mine[i:i + args.batch_size]
            writer.add(batch, *encoders.encode(batch))
            done = i + len(batch)
            if rank == 0 and len(mine) >= 100 and done // report > i // report and done < len(mine):
                print(f"precompute_embeddings: rank 0 encoded {done}/{len(mine)} prompts "
                      f"({done / (time.perf_counter() - began):.1f} prompts/s per rank)", flush=True)
        writer.close()
        if world > 1:
            dist.barrier()
        if rank == 0:
            index = finalize(args.out, encoders.describe(), [f"rank{r:05d}" for r in range(world)], dtype,
                             family=parts.family)
            return {"prompts": len(prompts), "index": index, "seconds": time.perf_counter() - start, "ranks": world,
                    "truncated": truncated}
        return None
    finally:
        if world > 1:
            dist.destroy_process_group()


def main(argv=None) -> int:
    args = parse(argv)
    try:
        out = run(args)
    except InputError as exc:
        print(f"precompute_embeddings: {exc}", file=sys.stderr)
        return 2
    if out is not None:
        import json

        index = json.load(open(out["index"]))
        size = sum(s["bytes"] for s in index["shards"])
        shapes = ", ".join(f"{k} {v['shape']}" for k, v in index["tensors"].items())
        print(f"precompute_embeddings: {out['prompts']} prompts + the empty prompt -> {len(index['shards'])} shards "
              f"({size / 2**20:.1f} MiB, {index['dtype']}, {index['family']}: {shapes}) in {args.out}; "
              f"{out['seconds']:.1f} s on {out['ranks']} rank(s)")
        cut = out["truncated"]
        if any(count for count, _, _ in cut):
            print("precompute_embeddings: cut as diffusers cuts them: " + ", ".join(
                f"{count} {'prompt(s) ' if i == 0 else ''}longer than {limit} {name} tokens"
                for i, (count, limit, name) in enumerate(cut)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
