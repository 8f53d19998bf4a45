"""Griffe extension: fleetcache's docstrings use Sphinx roles (``:class:`~fleetcache.X```),
which Markdown would show as they are. Each becomes an optional mkdocs-autorefs link: to
the object's entry where the site renders it, plain code where it does not (so an
unrendered target is no warning under ``mkdocs build --strict``).

``~a.b.C`` shows ``C``; a bare name (``:meth:`close```) is looked up as a member of the
class the docstring belongs to. Loaded by mkdocs.yml (mkdocstrings ``extensions``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|mod|func|meth|attr|exc|data|obj):`(?P<target>[^`]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring into Markdown (optional cross-references)."""

    def on_object(self, *, obj: griffe.Object, **_: Any) -> None:
        docstring = obj.docstring
        if docstring is None or ":`" not in docstring.value:
            return
        scope = obj if obj.is_class or obj.is_module else obj.parent
        docstring.value = _ROLE.sub(lambda m: _link(m["target"], scope), docstring.value)


def _link(target: str, scope: Any) -> str:
    short = target.startswith("~")
    path = target.lstrip("~").removesuffix("()")
    shown = path.rsplit(".", 1)[-1] if short else path
    if "." not in path and scope is not None:
        path = f"{scope.path}.{path}"
    return (f'<autoref identifier="{html.escape(path)}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>")
