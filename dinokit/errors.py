"""User-facing errors: the command line prints their message (one paragraph) and exits with status 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A mistake in the user's input (bad path, option, file or data), as opposed to an internal fault."""


class ConfigError(UserError, ValueError):
    """An invalid option or configuration value (also a ValueError for code that catches those)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be found, fetched or read, or does not fit the requested architecture."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency; its absence is the installation's gap, not a fault, so it is a UserError
    that names the extra of pyproject.toml installing it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{purpose} needs the optional package {module} ({e}); install it with "
                        f"pip install 'dinokit[{extra}]'") from None  # fmt: skip
