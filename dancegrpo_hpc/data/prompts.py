"""Prompt sets from files: .txt (one prompt per line), .jsonl (one JSON object per line,
the prompt in a `prompt` field or the field named by `field`), .csv (VidProM-style:
a `prompt` column, optionally `uuid` and `image` / `reference_image` for image-to-video
reference images, given relative to the CSV file's folder (or to image_root) or absolute).

    prompts = load_prompts("prompts.csv")                  # PromptSet
    split = split_prompts(prompts, eval_count=64, seed=0)  # PromptSplit(train, eval)
    split = load_prompt_split("prompts.txt", eval_fraction=0.05)

Prompts are stripped; empty ones are dropped; duplicates (the same prompt, and the
same reference image when there are images) keep their first occurrence. The counts
dropped are kept on the set (`dropped_empty`, `dropped_duplicates`, `summary()`). The
train / eval split is a seeded random choice of eval items, both parts in file order,
the same on every machine and Python version (random.Random). Errors are one line
(checks.InputError) naming the file, and the line or row where one is at fault.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

from ..checks import InputError, require

EXTENSIONS = (".txt", ".jsonl", ".csv")
PROMPT_FIELD = "prompt"
IMAGE_FIELDS = ("image", "reference_image")  # the first one present is used
ID_FIELD = "uuid"


@dataclass(frozen=True)
class PromptSet:
    prompts: List[str]
    reference_images: Optional[List[str]] = None  # one path per prompt (image-to-video), else None
    ids: Optional[List[str]] = None  # per-prompt ids (the CSV's uuid column), else None
    source: str = ""
    dropped_empty: int = field(default=0, compare=False)
    dropped_duplicates: int = field(default=0, compare=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int]) -> "PromptSet":
        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return PromptSet([self.prompts[i] for i in indices], pick(self.reference_images), pick(self.ids), self.source)

    def summary(self) -> str:
        images = " with reference images" if self.reference_images is not None else ""
        return (f"{self.source}: {len(self)} prompts{images} ({self.dropped_duplicates} duplicates and "
                f"{self.dropped_empty} empty dropped)")


@dataclass(frozen=True)
class PromptSplit:
    train: PromptSet
    eval: PromptSet


# ---- readers: yield (where, prompt, image or None, id or None) -----------------------------------
Row = Tuple[str, str, Optional[str], Optional[str]]


def _read_txt(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            yield f"line {n}", line, None, None


def _read_jsonl(path: str, prompt_field: str, image_field: Optional[str]) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise InputError(f"prompt file {path}: line {n} is not valid JSON ({exc})") from None
            require(isinstance(item, dict), f"prompt file {path}: line {n} must be a JSON object; got "
                                            f"{type(item).__name__}")
            require(prompt_field in item, f"prompt file {path}: line {n} has no field {prompt_field!r}; fields found: "
                                          f"{', '.join(map(str, item)) or 'none'}")
            prompt = item[prompt_field]
            require(prompt is None or isinstance(prompt, str), f"prompt file {path}: line {n}: field "
                                                               f"{prompt_field!r} must be a string; got "
                                                               f"{type(prompt).__name__}")
            image = None
            if image_field is not None:
                require(image_field in item, f"prompt file {path}: line {n} has no field {image_field!r}; fields "
                                             f"found: {', '.join(map(str, item))}")
                image = item[image_field]
            yield f"line {n}", prompt or "", image, None


def _read_csv(path: str, prompt_field: str, image_field: Optional[str]) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        require(columns, f"prompt file {path}: empty CSV (no header row)")
        found = ", ".join(repr(c) for c in columns)
        require(prompt_field in columns, f"prompt file {path}: no column {prompt_field!r}; columns found: {found}")
        if image_field is not None:
            require(image_field in columns, f"prompt file {path}: no column {image_field!r}; columns found: {found}")
        ids = ID_FIELD in columns
        for n, row in enumerate(reader, 2):  # the header is row 1
            image = row.get(image_field) if image_field is not None else None
            yield f"row {n}", row.get(prompt_field) or "", image, (row.get(ID_FIELD) or None) if ids else None


def _csv_columns(path: str) -> List[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), [])


def _jsonl_fields(path: str) -> List[str]:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                try:
                    item = json.loads(line)
                except ValueError:
                    return []  # the reader names the line
                return list(item) if isinstance(item, dict) else []
    return []


def load_prompts(path: str, field: Optional[str] = None, image_field: Optional[str] = None,
                 check_images: bool = True, image_root: Optional[str] = None) -> PromptSet:
    """The prompts of a .txt, .jsonl or .csv file (module docstring). field: the prompt's
    field / column (default "prompt"); image_field: the reference-image field / column
    (default: "image" or "reference_image" when the file has one; .txt files have none);
    check_images: every reference image must be an existing file; image_root: the folder
    relative image paths resolve against (default: the prompt file's folder)."""
    require(isinstance(path, (str, os.PathLike)), f"prompt file: path must be a string; got {type(path).__name__}")
    path = os.fspath(path)
    require(os.path.exists(path), f"prompt file {path!r} does not exist")
    require(os.path.isfile(path), f"prompt file {path!r} is not a file")
    ext = os.path.splitext(path)[1].lower()
    require(ext in EXTENSIONS, f"prompt file {path}: unknown extension {ext or '(none)'!r}; use "
                               f"{', '.join(EXTENSIONS)}")
    try:
        return _load(path, ext, field, image_field, check_images, image_root)
    except UnicodeDecodeError:  # raised mid-read by the text readers, without the line
        raise InputError(f"prompt file {path}: not UTF-8 text ({_first_undecodable(path)}); save it as UTF-8") \
            from None


def _first_undecodable(path: str) -> str:
    """Where a file stops being UTF-8: 'byte 0x.. on line n' (a newline never sits inside a character)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"byte 0x{line[exc.start]:02x} on line {n}"
    return "an undecodable byte"


def _load(path: str, ext: str, field: Optional[str], image_field: Optional[str], check_images: bool,
          image_root: Optional[str]) -> PromptSet:
    prompt_field = field or PROMPT_FIELD
    if ext == ".txt":
        require(field is None and image_field is None,
                f"prompt file {path}: a .txt file holds one prompt per line; field / image_field need .jsonl or .csv")
        rows = _read_txt(path)
    else:
        if image_field is None:
            present = _csv_columns(path) if ext == ".csv" else _jsonl_fields(path)
            image_field = next((name for name in IMAGE_FIELDS if name in present), None)
        rows = _read_csv(path, prompt_field, image_field) if ext == ".csv" else \
            _read_jsonl(path, prompt_field, image_field)

    base = os.path.abspath(image_root) if image_root is not None else os.path.dirname(os.path.abspath(path))
    prompts, images, ids, seen = [], [], [], set()
    empty = duplicates = 0
    for where, prompt, image, item_id in rows:
        prompt = prompt.strip()
        if not prompt:
            empty += 1
            continue
        if image_field is not None:
            require(isinstance(image, str) and image.strip(),
                    f"prompt file {path}: {where}: empty reference image ({image_field!r}) for prompt {prompt[:40]!r}")
            image = os.path.normpath(os.path.join(base, image.strip()))  # absolute paths stay as they are
        key = (prompt, image)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        prompts.append(prompt)
        images.append(image)
        ids.append(item_id)
    require(prompts, f"prompt file {path}: no prompts ({empty} empty lines or rows)" if empty else
            f"prompt file {path}: no prompts (the file is empty)")
    if image_field is not None and check_images:
        missing = [p for p in images if not os.path.isfile(p)]
        require(not missing, f"prompt file {path}: {len(missing)} reference image(s) not found, the first: "
                             f"{missing[0] if missing else ''}")
    return PromptSet(prompts, images if image_field is not None else None,
                     ids if any(i is not None for i in ids) else None, path, empty, duplicates)


def split_prompts(prompts: PromptSet, eval_count: Optional[int] = None, eval_fraction: Optional[float] = None,
                  seed: int = 0) -> PromptSplit:
    """A seeded random choice of eval prompts (eval_count, or round(eval_fraction x n), at
    least 1 when the fraction is > 0); both parts keep the file order. Neither given:
    every prompt trains and eval is empty. At least one prompt must stay for training."""
    n = len(prompts)
    require(eval_count is None or eval_fraction is None,
            "prompt split: give eval_count or eval_fraction, not both")
    if eval_fraction is not None:
        require(isinstance(eval_fraction, (int, float)) and not isinstance(eval_fraction, bool)
                and 0 <= eval_fraction < 1, f"prompt split: eval_fraction must lie in [0, 1); got {eval_fraction!r}")
        eval_count = max(1, round(eval_fraction * n)) if eval_fraction > 0 else 0
    eval_count = eval_count or 0
    require(isinstance(eval_count, int) and not isinstance(eval_count, bool) and eval_count >= 0,
            f"prompt split: eval_count must be an integer >= 0; got {eval_count!r}")
    require(eval_count < n, f"prompt split: {eval_count} eval prompts leave none to train on ({prompts.source}: "
                            f"{n} prompts after deduplication)")
    held = set(random.Random(seed).sample(range(n), eval_count))
    return PromptSplit(prompts.subset([i for i in range(n) if i not in held]),
                       prompts.subset([i for i in range(n) if i in held]))


def load_prompt_split(path: str, eval_count: Optional[int] = None, eval_fraction: Optional[float] = None,
                      seed: int = 0, field: Optional[str] = None, image_field: Optional[str] = None,
                      check_images: bool = True, image_root: Optional[str] = None) -> PromptSplit:
    """load_prompts then split_prompts."""
    return split_prompts(load_prompts(path, field, image_field, check_images, image_root), eval_count, eval_fraction,
                         seed)


__all__ = ["PromptSet", "PromptSplit", "load_prompts", "split_prompts", "load_prompt_split", "EXTENSIONS"]
