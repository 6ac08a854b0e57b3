"""Encodes a prompt file with the HunyuanVideo text encoders into an embedding cache
(dancegrpo_hpc/data/embedding_cache.py) that the trainer reads (data.embeddings).

    python tools/precompute_embeddings.py --prompts prompts.csv --text-encoders /ckpt/HunyuanVideo --out /data/emb
    torchrun --nproc-per-node 8 tools/precompute_embeddings.py --prompts prompts.txt \\
        --llama /ckpt/llava-llama-3-8b --clip /ckpt/clip-vit-large-patch14 --out /data/emb --device cuda

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

OWN_FILES = re.compile(r"^rank\d{5}(-\d{5}\.safetensors|\.part\.json)(\.tmp)?$|^index\.json(\.tmp)?$")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="prompt file: .txt, .jsonl or .csv (dancegrpo_hpc.data.prompts)")
    p.add_argument("--field", default=None, help="the prompt's field / column in .jsonl / .csv (default: prompt)")
    p.add_argument("--text-encoders", default=None, help="diffusers HunyuanVideo root: text_encoder/, tokenizer/, "
                                                         "text_encoder_2/, tokenizer_2/")
    p.add_argument("--llama", default=None, help="LLaVA-Llama3 folder (model + tokenizer); overrides the root's")
    p.add_argument("--clip", default=None, help="CLIP-L folder (model + tokenizer); overrides the root's")
    p.add_argument("--out", required=True, help="cache folder to write")
    p.add_argument("--shard-size", type=int, default=64, help="prompts per shard (64 x 256 x 4096 bf16 = 128 MiB)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per encoder forward")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="encoder and cache dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU LOCAL_RANK of each rank")
    p.add_argument("--overwrite", action="store_true", help="replace a finished cache already in --out")
    return p.parse_args(argv)


def check(args):
    """Everything that can fail on user input, before any process group or model."""
    from dancegrpo_hpc.data.prompts import load_prompts
    from dancegrpo_hpc.data.text_encoders import resolve_dtype, resolve_paths

    require(args.shard_size > 0, f"--shard-size must be a positive integer; got {args.shard_size}")
    require(args.batch_size > 0, f"--batch-size must be a positive integer; got {args.batch_size}")
    prompts = load_prompts(args.prompts, field=args.field, check_images=False).prompts
    prompts = list(dict.fromkeys(prompts))  # I2V files may repeat a prompt with other images: encode it once
    resolve_paths(args.text_encoders, args.llama, args.clip)  # checks the folders; loads nothing
    if args.device == "cuda":
        import torch

        require(torch.cuda.is_available(), "--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    dtype = resolve_dtype(args.dtype, args.device)
    require(not os.path.exists(args.out) or os.path.isdir(args.out), f"--out {args.out!r} is a file; give a folder")
    require(args.overwrite or not os.path.exists(os.path.join(args.out, "index.json")),
            f"--out {args.out!r} already holds an embedding cache; pass --overwrite or choose another folder")
    return prompts, dtype


def run(args):
    import torch
    import torch.distributed as dist

    from dancegrpo_hpc.data.embedding_cache import NEGATIVE_PROMPT, CacheWriter, finalize
    from dancegrpo_hpc.data.text_encoders import HunyuanTextEncoders

    start = time.perf_counter()
    prompts, dtype = check(args)
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
            mine = [NEGATIVE_PROMPT] + mine
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-rank weight-loading bars; this tool prints its own progress
        encoders = HunyuanTextEncoders.from_pretrained(args.text_encoders, args.llama, args.clip, device=device,
                                                       dtype=dtype)
        writer = CacheWriter(args.out, f"rank{rank:05d}", args.shard_size, dtype)
        truncated = encoders.count_truncated(prompts) if rank == 0 else None
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
            index = finalize(args.out, encoders.describe(), [f"rank{r:05d}" for r in range(world)], dtype)
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
        print(f"precompute_embeddings: {out['prompts']} prompts + the empty prompt -> {len(index['shards'])} shards "
              f"({size / 2**20:.1f} MiB, {index['dtype']}, [{index['max_length']}, {index['embed_dim']}] + "
              f"[{index['pooled_dim']}]) in {args.out}; {out['seconds']:.1f} s on {out['ranks']} rank(s)")
        llama, clip = out["truncated"]
        if llama or clip:
            print(f"precompute_embeddings: cut as diffusers cuts them: {llama} prompt(s) longer than "
                  f"{index['max_length']} Llama tokens, {clip} longer than {index['clip_max_length']} CLIP tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
