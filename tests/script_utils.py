"""Loads a script of the repository (tools/, examples/) as a module, so tests call its
functions directly."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path: str):
    name = os.path.splitext(os.path.basename(relative_path))[0] + "_script"
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
