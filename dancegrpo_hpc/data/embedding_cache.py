"""Precomputed HunyuanVideo text embeddings: sharded safetensors files plus index.json.

    cache = EmbeddingCache.open("/data/rl_embeddings")
    embeds, mask, pooled = cache.lookup(["a cat", "a dog"])  # [N, L, D], [N, L] long, [N, P]
    neg_embeds, neg_mask, neg_pooled = cache.negative()        # the empty prompt "", N = 1, for CFG

Layout of a cache folder:
  <part>-00000.safetensors ...  rows of `embeds` [n, L, D], `mask` [n, L] bool, `pooled`
                                [n, P]; the rows' prompts in the header metadata
  index.json                    format + version, what made the embeddings (encoder classes,
                                config / tokenizer hashes, template, max length), dims, dtype,
                                shard list and the prompt -> [shard, row] map

Every file is written to a .tmp name, fsynced and renamed; index.json comes last, so a
folder without one is an unfinished run and never read. Writers on several ranks each
write their own shards and a <part>.part.json listing them; one process then merges the
parts into index.json (`finalize`). The reader opens shards lazily (safetensors
safe_open, memory-mapped, a small LRU of open files) and reads only the requested rows.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import InputError, require

FORMAT = "dancegrpo-embedding-cache"
VERSION = 1
INDEX = "index.json"
NEGATIVE_PROMPT = ""  # always written: the unconditional branch of CFG
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAKE = "tools/precompute_embeddings.py"


def _dtype_name(dtype: torch.dtype) -> str:
    names = {v: k for k, v in DTYPES.items()}
    require(dtype in names, f"embedding cache: dtype must be one of {', '.join(DTYPES)}; got {dtype}")
    return names[dtype]


def atomic_write(path: str, data: bytes) -> None:
    """Readers see the old file or the whole new one, even after a crash."""
    from ..checkpoint.atomic import write_atomic

    write_atomic(path, lambda tmp: tmp.write_bytes(data))


class CacheWriter:
    """Buffers encoded rows and writes a shard every `shard_size` rows; close() flushes the
    rest and writes <part>.part.json. One writer per rank, each with its own part name."""

    def __init__(self, directory: str, part: str = "rank00000", shard_size: int = 64,
                 dtype: torch.dtype = torch.bfloat16):
        require(isinstance(shard_size, int) and shard_size > 0,
                f"embedding cache: shard_size must be a positive integer; got {shard_size!r}")
        _dtype_name(dtype)
        os.makedirs(directory, exist_ok=True)
        self.directory, self.part, self.shard_size, self.dtype = directory, part, shard_size, dtype
        self.shards: List[Dict] = []
        self._prompts: List[str] = []
        self._rows: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, prompts: Sequence[str], embeds: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> None:
        n = len(prompts)
        require(embeds.dim() == 3 and mask.shape == embeds.shape[:2] and pooled.dim() == 2
                and embeds.shape[0] == pooled.shape[0] == n,
                f"embedding cache: expected embeds [N, L, D], mask [N, L], pooled [N, P] for N={n} prompts; got "
                f"{tuple(embeds.shape)}, {tuple(mask.shape)}, {tuple(pooled.shape)}")
        embeds, mask, pooled = embeds.detach().cpu(), mask.detach().cpu(), pooled.detach().cpu()
        for i in range(n):
            self._prompts.append(prompts[i])
            self._rows.append((embeds[i], mask[i], pooled[i]))
            if len(self._rows) == self.shard_size:
                self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        from safetensors.torch import save

        embeds, mask, pooled = (torch.stack(t) for t in zip(*self._rows))
        tensors = {"embeds": embeds.to(self.dtype).contiguous(), "mask": mask.bool().contiguous(),
                   "pooled": pooled.to(self.dtype).contiguous()}
        name = f"{self.part}-{len(self.shards):05d}.safetensors"
        data = save(tensors, metadata={"format": FORMAT, "version": str(VERSION),
                                       "prompts": json.dumps(self._prompts, ensure_ascii=False)})
        atomic_write(os.path.join(self.directory, name), data)
        self.shards.append({"file": name, "rows": len(self._prompts), "bytes": len(data),
                            "prompts": self._prompts})
        self._prompts, self._rows = [], []

    def close(self) -> str:
        """Writes the last shard and the part file; returns the part file's path."""
        self.flush()
        path = os.path.join(self.directory, f"{self.part}.part.json")
        atomic_write(path, json.dumps({"format": FORMAT, "version": VERSION, "shards": self.shards},
                                      ensure_ascii=False).encode())
        return path


def finalize(directory: str, meta: Dict, parts: Sequence[str], dtype: torch.dtype) -> str:
    """Merges the writers' part files into index.json (written last) and removes the parts.
    meta: what made the embeddings (HunyuanTextEncoders.describe()); needs embed_dim,
    pooled_dim and max_length."""
    shards, prompts = [], {}
    for part in parts:
        path = os.path.join(directory, f"{part}.part.json")
        require(os.path.isfile(path), f"embedding cache: {path} is missing (a writer did not finish); rerun {MAKE}")
        for shard in json.load(open(path))["shards"]:
            for row, prompt in enumerate(shard.pop("prompts")):
                require(prompt not in prompts, f"embedding cache: prompt {prompt[:60]!r} was written twice")
                prompts[prompt] = [len(shards), row]
            shards.append(shard)
    require(NEGATIVE_PROMPT in prompts, "embedding cache: the empty prompt \"\" (CFG's negative) was not written; "
                                        "one writer must encode it")
    index = {"format": FORMAT, "version": VERSION, "dtype": _dtype_name(dtype), "negative_prompt": NEGATIVE_PROMPT,
             "count": len(prompts) - 1, **meta, "shards": shards, "prompts": prompts}
    for key in ("embed_dim", "pooled_dim", "max_length"):
        require(key in index, f"embedding cache: meta must give {key}")
    atomic_write(os.path.join(directory, INDEX), json.dumps(index, ensure_ascii=False).encode())
    for part in parts:
        os.remove(os.path.join(directory, f"{part}.part.json"))
    return os.path.join(directory, INDEX)


def write_embedding_cache(directory: str, encoders, prompts: Sequence[str], shard_size: int = 64,
                          batch_size: int = 8, dtype: Optional[torch.dtype] = None) -> str:
    """One process: encodes the prompts and "" with `encoders` (HunyuanTextEncoders or
    anything with encode(prompts) and describe()) and writes a complete cache. dtype:
    the cache's (default: the encoders' output dtype)."""
    prompts = [NEGATIVE_PROMPT] + [p for p in prompts if p != NEGATIVE_PROMPT]
    writer = None
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        embeds, mask, pooled = encoders.encode(batch)
        if writer is None:  # default dtype: the encoders' own
            dtype = dtype or embeds.dtype
            writer = CacheWriter(directory, "rank00000", shard_size, dtype)
        writer.add(batch, embeds, mask, pooled)
    writer.close()
    return finalize(directory, encoders.describe(), ["rank00000"], dtype)


class EmbeddingCache:
    """Reads a cache folder; use EmbeddingCache.open(path)."""

    def __init__(self, directory: str, index: Dict, open_files: int = 4):
        self.directory, self.index, self.open_files = directory, index, open_files
        self._map: Dict[str, List[int]] = index["prompts"]
        self._files: "OrderedDict[int, object]" = OrderedDict()

    @classmethod
    def open(cls, path: str, open_files: int = 4) -> "EmbeddingCache":
        require(isinstance(path, (str, os.PathLike)),
                f"embedding cache: path must be a string; got {type(path).__name__}")
        path = os.fspath(path)
        require(os.path.isdir(path), f"embedding cache {path!r} does not exist; create it with {MAKE} --out {path}")
        index_path = os.path.join(path, INDEX)
        require(os.path.isfile(index_path), f"embedding cache {path!r} has no {INDEX} (an unfinished or foreign "
                                            f"folder); (re)create it with {MAKE} --out {path}")
        try:
            index = json.load(open(index_path, encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"embedding cache {index_path} is corrupt ({exc}); recreate it with {MAKE}") from None
        require(isinstance(index, dict) and index.get("format") == FORMAT,
                f"embedding cache {index_path} is not a {FORMAT} index; point data.embeddings at a folder made by "
                f"{MAKE}")
        require(index.get("version") == VERSION, f"embedding cache {path!r} has format version "
                                                 f"{index.get('version')!r} but this code reads version {VERSION}; "
                                                 f"recreate it with {MAKE}")
        missing = [k for k in ("dtype", "max_length", "embed_dim", "pooled_dim", "shards", "prompts") if k not in index]
        require(not missing, f"embedding cache {index_path} is corrupt (no {', '.join(missing)}); recreate it with "
                             f"{MAKE}")
        require(index["dtype"] in DTYPES, f"embedding cache {index_path}: unknown dtype {index['dtype']!r}")
        for shard in index["shards"]:
            file = os.path.join(path, shard["file"])
            require(os.path.isfile(file), f"embedding cache {path!r}: shard {shard['file']} is missing; recreate "
                                          f"the cache with {MAKE}")
            require(os.path.getsize(file) == shard["bytes"], f"embedding cache {path!r}: shard {shard['file']} has "
                                                             f"{os.path.getsize(file)} bytes, the index says "
                                                             f"{shard['bytes']}; recreate the cache with {MAKE}")
        require(index.get("negative_prompt", NEGATIVE_PROMPT) in index["prompts"],
                f"embedding cache {index_path} has no entry for the empty prompt; recreate it with {MAKE}")
        return cls(path, index, open_files)

    # ---- what is in it -------------------------------------------------------------------
    @property
    def prompts(self) -> List[str]:
        """The cached prompts in index order, without the empty (negative) prompt."""
        return [p for p in self._map if p != NEGATIVE_PROMPT]

    def __len__(self) -> int:
        return len(self._map) - 1

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._map

    @property
    def max_length(self) -> int:
        return self.index["max_length"]

    @property
    def embed_dim(self) -> int:
        return self.index["embed_dim"]

    @property
    def pooled_dim(self) -> int:
        return self.index["pooled_dim"]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.index["dtype"]]

    # ---- reading ---------------------------------------------------------------------------
    def _file(self, shard: int):
        """An open shard (memory-mapped), most recently used kept last."""
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        from safetensors import safe_open

        info = self.index["shards"][shard]
        f = safe_open(os.path.join(self.directory, info["file"]), framework="pt")
        shapes = {k: f.get_slice(k).get_shape() for k in ("embeds", "mask", "pooled")}
        expected = {"embeds": [info["rows"], self.max_length, self.embed_dim], "mask": [info["rows"], self.max_length],
                    "pooled": [info["rows"], self.pooled_dim]}
        require(shapes == expected, f"embedding cache {self.directory!r}: shard {info['file']} holds shapes {shapes}, "
                                    f"the index says {expected}; recreate the cache with {MAKE}")
        self._files[shard] = f
        if len(self._files) > self.open_files:
            self._files.popitem(last=False)
        return f

    def lookup(self, prompts: Sequence[str], device=None, dtype: Optional[torch.dtype] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeds [N, L, D], mask [N, L] long, pooled [N, P]) in the order asked, in the
        cache's dtype unless dtype is given. InputError naming the first missing prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            if p not in self._map:
                raise InputError(f"embedding cache {self.directory!r} has no embedding for prompt {p[:80]!r} "
                                 f"({len(self)} prompts cached); add it to the prompt file and rerun {MAKE}")
        n, dtype = len(prompts), dtype or self.dtype
        embeds = torch.empty(n, self.max_length, self.embed_dim, dtype=dtype)
        mask = torch.empty(n, self.max_length, dtype=torch.long)
        pooled = torch.empty(n, self.pooled_dim, dtype=dtype)
        order = sorted(range(n), key=lambda i: self._map[prompts[i]])  # shard by shard, rows ascending
        for i in order:
            shard, row = self._map[prompts[i]]
            f = self._file(shard)
            embeds[i] = f.get_slice("embeds")[row:row + 1][0]
            mask[i] = f.get_slice("mask")[row:row + 1][0]
            pooled[i] = f.get_slice("pooled")[row:row + 1][0]
        if device is not None:
            embeds, mask, pooled = embeds.to(device), mask.to(device), pooled.to(device)
        return embeds, mask, pooled

    def negative(self, device=None, dtype: Optional[torch.dtype] = None):
        """lookup([""]): the empty prompt's (embeds [1, L, D], mask [1, L], pooled [1, P])."""
        return self.lookup([self.index.get("negative_prompt", NEGATIVE_PROMPT)], device, dtype)

    def __getstate__(self):  # picklable (DataLoader workers): open files are reopened on demand
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()
        return state


__all__ = ["EmbeddingCache", "CacheWriter", "finalize", "write_embedding_cache", "atomic_write", "FORMAT", "VERSION",
           "INDEX", "NEGATIVE_PROMPT"]
