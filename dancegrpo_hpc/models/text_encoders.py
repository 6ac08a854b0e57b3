"""Text encoders from local folders, shared by the families' data parts (models/family.py
`DataParts`): folder checks with one-line errors before transformers is imported (a root of
another family is named), dtypes, the hashes a cache records, and the CLIP / T5 calls of
diffusers' pipelines. Models and tokenizers are transformers' own classes, so the numbers
are theirs; transformers is imported only when a model is loaded or called."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch

from ..checks import InputError, require
from .family import DataParts, EncoderFolder, family_names, get_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
CLIP_TYPES = ("clip_text_model", "clip")
T5_TYPES = ("t5",)


@dataclass(frozen=True)
class Folder:
    """A checked encoder: its model folder, tokenizer folder and config.json model_type."""

    model: str
    tokenizer: str
    model_type: str


def flag(key: str) -> str:
    """The tools/precompute_embeddings.py option that overrides encoder `key`'s folder."""
    return "--" + key.replace("_", "-")


def read_model_type(path: str) -> Optional[str]:
    """config.json's model_type in `path`, None when absent or unreadable."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def family_of_root(root: str, exclude: str = "") -> Optional[DataParts]:
    """The data parts of the (other) family whose text-encoder layout the diffusers root holds."""
    for name in family_names():
        if name == exclude:
            continue
        try:
            parts = get_family(name).data()
        except Exception:  # a family without data parts (or one being written) cannot be recognised
            continue
        if parts.text_encoder_folders and all(read_model_type(os.path.join(root, f.model)) in f.types
                                              for f in parts.text_encoder_folders):
            return parts
    return None


def _model_type(path: str, folder: EncoderFolder, field: str, layout: str) -> str:
    require(os.path.isdir(path), f"text encoders: {folder.what} folder {path!r} does not exist; set {field} to {layout} "
                                 "or to a transformers save_pretrained folder")
    config = os.path.join(path, "config.json")
    require(os.path.isfile(config), f"text encoders: {folder.what} folder {path!r} has no config.json; set {field} to "
                                    "a transformers save_pretrained folder")
    try:
        model_type = json.load(open(config)).get("model_type")
    except ValueError as exc:
        raise InputError(f"text encoders: {config} is not valid JSON ({exc}); re-save the {folder.what} model") from None
    require(model_type in folder.types, f"text encoders: {folder.what} folder {path!r} holds a {model_type!r} model; "
                                        f"{field} needs one of {', '.join(folder.types)}")
    weights = [p for p in os.listdir(path) if p.endswith((".safetensors", ".bin", ".safetensors.index.json"))]
    require(weights, f"text encoders: {folder.what} folder {path!r} has config.json but no weights (*.safetensors / "
                     "*.bin); copy the weights there")
    return model_type


def _check_tokenizer(path: str, what: str, field: str, layout: str) -> None:
    require(os.path.isdir(path), f"text encoders: {what} tokenizer folder {path!r} does not exist; set {field} to "
                                 f"{layout} or to a folder holding the model and its tokenizer")
    require(any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES),
            f"text encoders: {what} tokenizer folder {path!r} has none of {', '.join(TOKENIZER_FILES)}; save the "
            "tokenizer there (tokenizer.save_pretrained)")


def _other_family(parts: DataParts, root: str, field: str) -> None:
    other = family_of_root(root, exclude=parts.family)
    if other is not None:
        whats = lambda p: " + ".join(f.what for f in p.text_encoder_folders)  # noqa: E731
        raise InputError(f"text encoders: {field} {root!r} holds the text encoders of model family {other.family!r} "
                         f"({whats(other)}) but model family {parts.family!r} reads {whats(parts)}; point {field} at "
                         f"{parts.describe_folders()}, or change the family (model.family / --family)")


def resolve_folders(parts: DataParts, root: Optional[str], folders: Dict[str, str], field: str) -> Dict[str, Folder]:
    """The model and tokenizer folder of each of the family's text encoders: explicit
    folders (model and tokenizer together, by encoder key) override the root's. Checks them
    all, naming the field (or the override flag); loads nothing."""
    layout, keys = parts.describe_folders(), [f.key for f in parts.text_encoder_folders]
    unknown = [k for k in folders if k not in keys]
    require(not unknown, f"text encoders: {flag(unknown[0]) if unknown else ''}: model family {parts.family!r} has no "
                         f"such text encoder; its encoders: {', '.join(flag(k) for k in keys)}")
    if root is None:
        missing = [k for k in keys if k not in folders]
        give = (f"both the {flag(keys[0])} and the {flag(keys[1])} folder" if len(keys) == 2 else
                f"all of the {', '.join(flag(k) for k in keys[:-1])} and {flag(keys[-1])} folders")
        require(not missing, f"text encoders: set {field} to {layout}" + ("" if not folders else f", or give {give}"))
    else:
        require(os.path.isdir(root), f"text encoders: {field} {root!r} does not exist; point it at {layout}")
    out = {}
    for folder in parts.text_encoder_folders:
        given = folders.get(folder.key)
        model_field = flag(folder.key) if given is not None else f"{field} ({folder.model}/)"
        model = given if given is not None else os.path.join(root, folder.model)
        if given is None and os.path.isdir(model) and read_model_type(model) not in folder.types + (None,):
            _other_family(parts, root, field)  # a root of another family: say which
        model_type = _model_type(model, folder, model_field, layout)
        tokenizer = given if given is not None else os.path.join(root, folder.tokenizer)
        _check_tokenizer(tokenizer, folder.what, model_field.replace(f"{folder.model}/", f"{folder.tokenizer}/"),
                         layout)
        out[folder.key] = Folder(model, tokenizer, model_type)
    return out


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Union[str, torch.device]) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere, unless given."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        require(dtype in DTYPES.values(), f"text encoders: dtype must be one of {', '.join(DTYPES)}; got {dtype}")
        return dtype
    require(dtype in DTYPES, f"text encoders: dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(model) -> str:
    """Architecture of the module that runs (not where or in which dtype it was loaded)."""
    config = json.loads(model.config.to_json_string(use_diff=True))
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    return _sha256([type(model).__name__, config])


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return _sha256([rules, tokenizer.padding_side, tokenizer.special_tokens_map])


def describe_encoder(model, tokenizer, path: Optional[str]) -> Dict:
    return {"class": type(model).__name__, "path": None if path is None else os.path.abspath(path),
            "config_sha256": config_hash(model), "tokenizer_sha256": tokenizer_hash(tokenizer)}


def check_pad(tokenizer, what: str) -> None:
    require(tokenizer.pad_token is not None, f"text encoders: the {what} tokenizer has no pad token; set pad_token in "
                                             "its tokenizer_config.json (prompts are padded to a fixed length)")


def load(folders: Dict[str, Folder], classes: Dict[str, str], dtype: torch.dtype, device, field: str):
    """{key: (model, tokenizer)}: transformers' class classes[key] from each folder, eval mode."""
    from ..extras import import_extra

    transformers = import_extra("transformers", "real", field)  # one line naming the extra when it is missing
    tokenizers = {k: transformers.AutoTokenizer.from_pretrained(f.tokenizer) for k, f in folders.items()}
    return {k: (getattr(transformers, classes[k]).from_pretrained(f.model, dtype=dtype).to(device).eval(),
                tokenizers[k]) for k, f in folders.items()}


def clip_max_length(tokenizer) -> int:
    """diffusers' tokenizer_max_length: the CLIP tokenizer's model_max_length (77)."""
    return tokenizer.model_max_length


def token_ids(tokenizer, prompts: Sequence[str], max_length: int) -> torch.Tensor:
    """Padded to max_length and cut there, as diffusers' pipelines tokenize."""
    return tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def count_longer(tokenizer, prompts: Sequence[str], limit: int) -> int:
    """Prompts with more than `limit` tokens (special tokens included): the ones diffusers cuts."""
    return sum(len(ids) > limit for ids in tokenizer(list(prompts), verbose=False).input_ids)


def device_of(module) -> torch.device:
    return next(module.parameters()).device


__all__ = ["DTYPES", "CLIP_TYPES", "T5_TYPES", "Folder", "resolve_folders", "resolve_dtype", "config_hash",
           "tokenizer_hash", "describe_encoder", "check_pad", "load", "token_ids", "count_longer", "flag",
           "family_of_root", "clip_max_length", "device_of"]
