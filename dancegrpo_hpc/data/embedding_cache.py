"""Precomputed text embeddings of a model family: sharded safetensors files plus index.json.

    cache = EmbeddingCache.open("/data/rl_embeddings", family="hunyuan_video")
    embeds, mask, pooled = cache.lookup(["a cat", "a dog"])  # HunyuanVideo: [N, L, D], [N, L] long, [N, P]
    neg_embeds, neg_mask, neg_pooled = cache.negative()        # the empty prompt "", N = 1, for CFG

The tensors are the family's (models/family.py `DataParts.text_tensors`: HunyuanVideo
embeds, mask, pooled; FLUX and SD3 embeds, pooled), in the order its text encoders give
them; masks are stored as bool and read as long, the rest in the cache's dtype.

Layout of a cache folder:
  <part>-00000.safetensors ...  rows of each tensor [n, ...]; the rows' prompts in the
                                header metadata
  index.json                    format + version, the model family, the tensors' names and
                                per-prompt shapes, what made the embeddings (encoder
                                classes, config / tokenizer hashes, lengths), dtype, shard
                                list and the prompt -> [shard, row] map. An index without
                                a family (written before families) is HunyuanVideo's.

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
VERSION = 1  # readers accept indexes without `family` / `tensors` (HunyuanVideo's, written before families)
INDEX = "index.json"
NEGATIVE_PROMPT = ""  # always written: the unconditional branch of CFG
LEGACY_FAMILY = "hunyuan_video"  # the family of an index that names none
HUNYUAN_TENSORS, HUNYUAN_MASKS = ("embeds", "mask", "pooled"), ("mask",)
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
    rest and writes <part>.part.json. One writer per rank, each with its own part name.
    names: the family's text tensors in the order add() takes them; masks: which are masks."""

    def __init__(self, directory: str, part: str = "rank00000", shard_size: int = 64,
                 dtype: torch.dtype = torch.bfloat16, names: Sequence[str] = HUNYUAN_TENSORS,
                 masks: Sequence[str] = HUNYUAN_MASKS):
        require(isinstance(shard_size, int) and shard_size > 0,
                f"embedding cache: shard_size must be a positive integer; got {shard_size!r}")
        _dtype_name(dtype)
        require(len(names) > 0 and set(masks) <= set(names),
                f"embedding cache: masks {list(masks)} must be among the tensors {list(names)}")
        os.makedirs(directory, exist_ok=True)
        self.directory, self.part, self.shard_size, self.dtype = directory, part, shard_size, dtype
        self.names, self.masks = tuple(names), tuple(masks)
        self.shapes: Optional[Dict[str, List[int]]] = None  # per-prompt shapes, fixed by the first add
        self.shards: List[Dict] = []
        self._prompts: List[str] = []
        self._rows: List[Tuple[torch.Tensor, ...]] = []

    def add(self, prompts: Sequence[str], *tensors: torch.Tensor) -> None:
        """One tensor per name, the prompts on dim 0."""
        n = len(prompts)
        shapes = {k: list(t.shape[1:]) for k, t in zip(self.names, tensors)}
        require(len(tensors) == len(self.names) and all(t.shape[0] == n for t in tensors)
                and (self.shapes is None or shapes == self.shapes),
                f"embedding cache: expected {', '.join(self.names)} with N={n} prompts on dim 0"
                + ("" if self.shapes is None else f" and per-prompt shapes {self.shapes}")
                + f"; got {[tuple(t.shape) for t in tensors]}")
        self.shapes = shapes
        tensors = [t.detach().cpu() for t in tensors]
        for i in range(n):
            self._prompts.append(prompts[i])
            self._rows.append(tuple(t[i] for t in tensors))
            if len(self._rows) == self.shard_size:
                self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        from safetensors.torch import save

        stacked = (torch.stack(t) for t in zip(*self._rows))
        tensors = {k: (t.bool() if k in self.masks else t.to(self.dtype)).contiguous()
                   for k, t in zip(self.names, stacked)}
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
        tensors = None if self.shapes is None else \
            {k: {"shape": self.shapes[k], "mask": k in self.masks} for k in self.names}
        atomic_write(path, json.dumps({"format": FORMAT, "version": VERSION, "tensors": tensors,
                                       "shards": self.shards}, ensure_ascii=False).encode())
        return path


def finalize(directory: str, meta: Dict, parts: Sequence[str], dtype: torch.dtype,
             family: str = LEGACY_FAMILY) -> str:
    """Merges the writers' part files into index.json (written last) and removes the parts.
    meta: what made the embeddings (the text encoders' describe()); family: the model
    family whose text encoders wrote them (models/family.py)."""
    shards, prompts, tensors = [], {}, None
    for part in parts:
        path = os.path.join(directory, f"{part}.part.json")
        require(os.path.isfile(path), f"embedding cache: {path} is missing (a writer did not finish); rerun {MAKE}")
        written = json.load(open(path))
        if written.get("tensors") is not None:  # a writer that got no prompts has no shapes
            require(tensors is None or written["tensors"] == tensors,
                    f"embedding cache: the writers wrote different tensors ({tensors} and {written['tensors']}); "
                    f"rerun {MAKE} with the same text encoders on every rank")
            tensors = written["tensors"]
        for shard in written["shards"]:
            for row, prompt in enumerate(shard.pop("prompts")):
                require(prompt not in prompts, f"embedding cache: prompt {prompt[:60]!r} was written twice")
                prompts[prompt] = [len(shards), row]
            shards.append(shard)
    require(NEGATIVE_PROMPT in prompts, "embedding cache: the empty prompt \"\" (CFG's negative) was not written; "
                                        "one writer must encode it")
    index = {"format": FORMAT, "version": VERSION, "family": family, "dtype": _dtype_name(dtype),
             "negative_prompt": NEGATIVE_PROMPT, "count": len(prompts) - 1, **meta, "tensors": tensors,
             "shards": shards, "prompts": prompts}
    atomic_write(os.path.join(directory, INDEX), json.dumps(index, ensure_ascii=False).encode())
    for part in parts:
        os.remove(os.path.join(directory, f"{part}.part.json"))
    return os.path.join(directory, INDEX)


def write_embedding_cache(directory: str, encoders, prompts: Sequence[str], shard_size: int = 64,
                          batch_size: int = 8, dtype: Optional[torch.dtype] = None) -> str:
    """One process: encodes the prompts and "" with `encoders` (a family's TextEncoders:
    encode(prompts), describe(), family, tensor_names, mask_names; HunyuanVideo's without
    the last three) and writes a complete cache. dtype: the cache's (default: the
    encoders' output dtype)."""
    prompts = [NEGATIVE_PROMPT] + [p for p in prompts if p != NEGATIVE_PROMPT]
    names = getattr(encoders, "tensor_names", HUNYUAN_TENSORS)
    masks = getattr(encoders, "mask_names", HUNYUAN_MASKS if names == HUNYUAN_TENSORS else ())
    writer = None
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        tensors = encoders.encode(batch)
        if writer is None:  # default dtype: the encoders' own
            dtype = dtype or tensors[0].dtype
            writer = CacheWriter(directory, "rank00000", shard_size, dtype, names, masks)
        writer.add(batch, *tensors)
    writer.close()
    return finalize(directory, encoders.describe(), ["rank00000"], dtype,
                    family=getattr(encoders, "family", LEGACY_FAMILY))


class EmbeddingCache:
    """Reads a cache folder; use EmbeddingCache.open(path)."""

    def __init__(self, directory: str, index: Dict, open_files: int = 4):
        self.directory, self.index, self.open_files = directory, index, open_files
        self._map: Dict[str, List[int]] = index["prompts"]
        self._files: "OrderedDict[int, object]" = OrderedDict()
        self.tensors: Dict[str, Dict] = index.get("tensors") or {  # an index from before families: HunyuanVideo's
            "embeds": {"shape": [index["max_length"], index["embed_dim"]], "mask": False},
            "mask": {"shape": [index["max_length"]], "mask": True},
            "pooled": {"shape": [index["pooled_dim"]], "mask": False}}

    @classmethod
    def open(cls, path: str, open_files: int = 4, family: Optional[str] = None,
             field: str = "data.embeddings") -> "EmbeddingCache":
        """family: refuse, in one line naming `field`, a cache another family's text encoders wrote."""
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
        schema = ("tensors",) if index.get("tensors") else ("max_length", "embed_dim", "pooled_dim")
        missing = [k for k in ("dtype", "shards", "prompts") + schema if k not in index]
        require(not missing, f"embedding cache {index_path} is corrupt (no {', '.join(missing)}); recreate it with "
                             f"{MAKE}")
        require(index["dtype"] in DTYPES, f"embedding cache {index_path}: unknown dtype {index['dtype']!r}")
        found = index.get("family", LEGACY_FAMILY)
        require(family is None or found == family,
                f"config: {field} {path!r} holds text embeddings of model family {found!r} but model.family is "
                f"{family!r}; encode the prompts with this family's text encoders ({MAKE} --family {family})")
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
    def family(self) -> str:
        """The model family whose text encoders wrote it (HunyuanVideo for an index naming none)."""
        return self.index.get("family", LEGACY_FAMILY)

    @property
    def names(self) -> Tuple[str, ...]:
        """Its tensors, in the order lookup() returns them."""
        return tuple(self.tensors)

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Per-prompt shape of each tensor."""
        return {k: tuple(v["shape"]) for k, v in self.tensors.items()}

    @property
    def max_length(self) -> Optional[int]:
        return self.index.get("max_length")

    @property
    def embed_dim(self) -> Optional[int]:
        return self.index.get("embed_dim")

    @property
    def pooled_dim(self) -> Optional[int]:
        return self.index.get("pooled_dim")

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
        shapes = {k: f.get_slice(k).get_shape() if k in f.keys() else None for k in self.tensors}
        expected = {k: [info["rows"], *v["shape"]] for k, v in self.tensors.items()}
        require(shapes == expected, f"embedding cache {self.directory!r}: shard {info['file']} holds shapes {shapes}, "
                                    f"the index says {expected}; recreate the cache with {MAKE}")
        self._files[shard] = f
        if len(self._files) > self.open_files:
            self._files.popitem(last=False)
        return f

    def lookup(self, prompts: Sequence[str], device=None, dtype: Optional[torch.dtype] = None
               ) -> Tuple[torch.Tensor, ...]:
        """One tensor per name (HunyuanVideo: embeds [N, L, D], mask [N, L] long, pooled
        [N, P]) for the prompts in the order asked; masks long, the rest in the cache's dtype
        unless dtype is given. InputError naming the first missing prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            if p not in self._map:
                raise InputError(f"embedding cache {self.directory!r} has no embedding for prompt {p[:80]!r} "
                                 f"({len(self)} prompts cached); add it to the prompt file and rerun {MAKE}")
        n, dtype = len(prompts), dtype or self.dtype
        out = {k: torch.empty(n, *v["shape"], dtype=torch.long if v["mask"] else dtype)
               for k, v in self.tensors.items()}
        order = sorted(range(n), key=lambda i: self._map[prompts[i]])  # shard by shard, rows ascending
        for i in order:
            shard, row = self._map[prompts[i]]
            f = self._file(shard)
            for k, t in out.items():
                t[i] = f.get_slice(k)[row:row + 1][0]
        return tuple(t if device is None else t.to(device) for t in out.values())

    def negative(self, device=None, dtype: Optional[torch.dtype] = None):
        """lookup([""]): the empty prompt's tensors, N = 1 (HunyuanVideo: embeds [1, L, D],
        mask [1, L], pooled [1, P])."""
        return self.lookup([self.index.get("negative_prompt", NEGATIVE_PROMPT)], device, dtype)

    def __getstate__(self):  # picklable (DataLoader workers): open files are reopened on demand
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()
        return state


__all__ = ["EmbeddingCache", "CacheWriter", "finalize", "write_embedding_cache", "atomic_write", "FORMAT", "VERSION",
           "INDEX", "NEGATIVE_PROMPT", "LEGACY_FAMILY"]
