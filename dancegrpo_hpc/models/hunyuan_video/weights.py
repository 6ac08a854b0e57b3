"""HunyuanVideo weights in diffusers' layout: the sharded load, export and checkpoint
writer shared with FLUX (models/common/weights.py), re-exported under their names here."""

from __future__ import annotations

from ..common.weights import (CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, Piece, SafetensorsReader, StateDictReader,
                              export_state_dict, load_diffusers, load_weights, plan, save_diffusers, tp_sharded)

__all__ = ["CONFIG_FILE", "INDEX_FILE", "WEIGHTS_FILE", "Piece", "SafetensorsReader", "StateDictReader",
           "export_state_dict", "load_diffusers", "load_weights", "plan", "save_diffusers", "tp_sharded"]
