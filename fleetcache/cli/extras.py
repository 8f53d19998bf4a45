"""Optional dependencies of the CLI, checked before use so a missing one is one clear line."""

from __future__ import annotations

import importlib.util


class MissingExtraError(Exception):
    """A subcommand needs packages of an extra that is not installed."""


def require(extra: str, *modules: str) -> None:
    """``MissingExtraError`` naming ``pip install 'fleetcache[extra]'`` unless every module
    in ``modules`` can be imported."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"needs {', '.join(missing)} (the '{extra}' extra): "
            f"pip install 'fleetcache[{extra}]'"
        )
