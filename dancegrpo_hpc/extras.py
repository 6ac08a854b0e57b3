"""Optional dependencies, grouped as setup.py's extras (`real`, `rewards`, `gpu`): imported
only where they are used, so importing any module of the package needs only the install
dependencies. A missing one is reported in one line naming the extra that installs it."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Iterable

from .checks import InputError


def install_hint(extra: str) -> str:
    """The command that installs an extra into an editable checkout (as tools/_env.sh installs it:
    without build isolation, so the fused kernels build against the torch already installed)."""
    return f'pip install --no-build-isolation -e ".[{extra}]"'


def missing_message(where: str, package: str, extra: str, detail: str = "") -> str:
    detail = f" ({detail})" if detail else ""
    return f"{where}: needs the `{package}` package{detail}; install the `{extra}` extra: {install_hint(extra)}"


def import_extra(module: str, extra: str, where: str):
    """importlib.import_module(module), or one InputError line naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(missing_message(where, module.split(".")[0], extra, str(exc))) from None


def require_extra(modules: Iterable[str], extra: str, where: str) -> None:
    """Checks that each top-level module is installed without importing it (cheap: run it
    before anything heavy loads)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise InputError(missing_message(where, module, extra))


def dali_installed() -> bool:
    """NVIDIA DALI (the `gpu` extra's image / video loader) is importable."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no nvidia namespace package at all
        return False


__all__ = ["dali_installed", "import_extra", "install_hint", "missing_message", "require_extra"]
