"""mkdocs hook: the pages of the docs site that are made from the code and the repository.

Nothing here is copied by hand, so nothing can drift:

* ``<!-- settings-reference -->`` becomes the table of every :class:`fleetcache.CacheConfig`
  field (type and default from ``dataclasses.fields``, meaning from the class docstring's
  ``Attributes`` entries). A field without an entry, or an entry naming no field, fails
  the build.
* ``<!-- api-reference -->`` becomes one mkdocstrings ``::: fleetcache.<name>`` block per
  name of ``fleetcache.__all__`` (errors last).
* ``<!-- readme section="..." [start="..."] [stop="..."] [headings="N"] -->`` becomes the
  part of README.md under the heading ``section`` (any level): from the line starting with
  ``start`` (a bold lead given as ``start`` is dropped: the page title replaces it) to the
  one before the line starting with ``stop``. Subheadings move up a level, README's
  repository links point at the site's pages (or show as paths), and with ``headings="N"``
  each topic paragraph (``**Fork.** ...``) gets a level-N heading, for the page's table of
  contents. A heading or line that is not found fails the build.
* ``benchmarks/index.md`` and ``benchmarks/results.md`` are benchmarks/README.md and
  benchmarks/results/SUMMARY.md as they are, with the PNG charts beside them.

``mkdocs.yml`` registers this file under ``hooks:``; tests/packaging/test_docs.py calls
:func:`settings_reference` and :func:`api_reference` directly and checks the built page.
"""

from __future__ import annotations

import dataclasses
import inspect
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

import fleetcache
from fleetcache import CacheConfig

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "benchmarks"

# Repository files that are pages of the site (README links to them), by their site path.
SITE_PAGES = {
    "benchmarks/README.md": "benchmarks/index.md",
    "benchmarks/results/SUMMARY.md": "benchmarks/results.md",
}
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_ENTRY = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*): (?P<text>.*)$")
_MARKER = re.compile(r"^<!-- (?P<kind>readme|settings-reference|api-reference)(?P<args>.*?)-->$",
                     re.MULTILINE)


# --- settings reference -------------------------------------------------------------------

def setting_docs(config: type | None = None) -> dict[str, str]:
    """Each field's description, from the ``Attributes:`` section of the docstring of
    ``config`` (:class:`fleetcache.CacheConfig` by default; Google style: ``name: text``,
    continuation lines indented further)."""
    config = config or CacheConfig
    lines = (inspect.getdoc(config) or "").splitlines()
    heads = [i for i, line in enumerate(lines) if line == "Attributes:"]
    if len(heads) != 1:
        raise ValueError(f"{config.__name__}'s docstring needs one 'Attributes:' section")
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[heads[0] + 1:]:
        match = _ENTRY.match(line)
        if match:
            if match["name"] in entries:
                raise ValueError(f"{config.__name__}'s docstring describes "
                                 f"{match['name']!r} twice")
            current = entries[match["name"]] = [match["text"].strip()]
        elif current is not None and line.startswith("        "):
            current.append(line.strip())
        else:
            break  # the section ends at the first line that is neither entry nor continuation
    return {name: " ".join(parts) for name, parts in entries.items()}


def _rst_to_markdown(text: str) -> str:
    """The docstring's reST roles and literals as Markdown for a table cell."""
    text = re.sub(r":(?:class|mod|func|meth|attr|exc|data):`~?([^`]+)`", r"``\1``", text)
    parts = text.split("``")  # odd parts are literals
    return "".join(f"`{part}`" if i % 2 else part.replace("|", "\\|")
                   for i, part in enumerate(parts))


def settings_reference(config: type | None = None) -> str:
    """The Markdown table of every field of ``config`` (:class:`fleetcache.CacheConfig` by
    default): name, type, default, meaning.

    Raises ``ValueError`` when a field has no description in the docstring, or the
    docstring describes a name that is no field (so the build fails instead of drifting).
    """
    config = config or CacheConfig
    docs = setting_docs(config)
    fields = dataclasses.fields(config)
    names = [f.name for f in fields]
    missing = [name for name in names if name not in docs]
    unknown = sorted(set(docs) - set(names))
    if missing or unknown:
        raise ValueError(f"{config.__name__}'s docstring: fields without a description {missing}, "
                         f"descriptions of no field {unknown}")
    rows = [
        "| setting | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for field in fields:
        default = field.default
        if default is dataclasses.MISSING:  # pragma: no cover - every setting has a default
            shown = "(required)"
        elif isinstance(default, int) and not isinstance(default, bool) and default >= 10_000:
            mib = f" ({default >> 20} MiB)" if default % (1 << 20) == 0 else ""
            shown = f"`{default:_}`{mib}"
        else:
            shown = f"`{default!r}`"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__",
                                                                      str(field.type))
        rows.append(f'| <a id="{field.name}"></a>`{field.name}` | `{kind}` | {shown} '
                    f"| {_rst_to_markdown(docs[field.name])} |")
    return "\n".join(rows) + "\n"


# --- API reference ------------------------------------------------------------------------

def api_reference() -> str:
    """One mkdocstrings block per public name (``fleetcache.__all__``), errors last."""
    def is_error(name: str) -> bool:
        obj = getattr(fleetcache, name)
        return isinstance(obj, type) and issubclass(obj, BaseException)

    names = list(fleetcache.__all__)
    first = [n for n in names if n == "FleetCache"]
    others = [n for n in names if n != "FleetCache" and not is_error(n)]
    errors = [n for n in names if is_error(n)]
    blocks = ["## The cache and its values", ""]
    blocks += [f"::: fleetcache.{name}\n" for name in first + others]
    blocks += ["## Errors", ""]
    blocks += [f"::: fleetcache.{name}\n" for name in errors]
    return "\n".join(blocks)


# --- README sections ----------------------------------------------------------------------

def readme_section(section: str, start: str | None = None, stop: str | None = None) -> str:
    """The body of README's heading ``section`` (any level) up to the next heading of its
    level or above; from the line starting with ``start``, up to the line starting with
    ``stop``. Its subheadings move up so that the first level below it is ``##``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    headings = _headings(lines)
    try:
        begin, level = next((i, n) for i, n in headings.items()
                            if lines[i][n:].strip() == section)
    except StopIteration:
        raise ValueError(f"README.md has no heading {section!r}") from None
    end = next((i for i, n in headings.items() if i > begin and n <= level), len(lines))
    body = list(range(begin + 1, end))
    first = None
    if start is not None:
        body = body[_find(lines, body, start, section):]
        if start.startswith("**") and start.endswith("**"):  # a bold lead: the page title
            first = lines[body[0]][len(start):].lstrip()
    if stop is not None:
        body = body[:_find(lines, body, stop, section)]
    out = []
    for i in body:
        line = first if first is not None and i == body[0] else lines[i]
        if i in headings and level > 1:
            line = line[level - 1:]
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def _headings(lines: list[str]) -> dict[int, int]:
    """Line number -> level of every Markdown heading outside code fences."""
    found, fenced = {}, False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) ", line)):
            found[i] = len(m[1])
    return found


def _find(lines: list[str], body: list[int], prefix: str, section: str) -> int:
    for n, i in enumerate(body):
        if lines[i].startswith(prefix):
            return n
    raise ValueError(f"README.md section {section!r} has no line starting with {prefix!r}")


def repo_links(markdown: str, page: str) -> str:
    """Point README's repository-relative links at site pages, or show them as paths."""

    def fix(match: re.Match[str]) -> str:
        text, target = match[1], match[2]
        if "://" in target or target.startswith("#"):
            return match[0]
        path, _, anchor = target.partition("#")
        site = SITE_PAGES.get(path) or (path[len("docs/"):] if path.startswith("docs/")
                                        else None)
        if site is None:
            return f"`{path}`" if text in (path, f"`{path}`") else f"{text} (`{path}`)"
        rel = posixpath.relpath(site, posixpath.dirname(page) or ".")
        return f"[{text}]({rel}{'#' + anchor if anchor else ''})"

    return _LINK.sub(fix, markdown)


# --- mkdocs events ------------------------------------------------------------------------

def _expand(match: re.Match[str], page: str) -> str:
    kind = match["kind"]
    if kind == "settings-reference":
        return settings_reference()
    if kind == "api-reference":
        return api_reference()
    args: dict[str, str] = {}
    for token in shlex.split(match["args"]):
        key, _, value = token.partition("=")
        if key not in ("section", "start", "stop", "headings"):
            raise ValueError(f"{page}: unknown readme include argument {key!r}")
        args[key] = value
    if "section" not in args:
        raise ValueError(f"{page}: a readme include needs section=")
    headings = args.pop("headings", None)
    text = readme_section(**args)
    if headings is not None:
        text = bold_headings(text, level=int(headings))
    return repo_links(text, page)


def bold_headings(markdown: str, level: int) -> str:
    """A heading before each paragraph that starts with a bold lead (README's way of naming
    its topics), so the page has a table of contents: ``**Fork.** text`` becomes a heading
    "Fork" and the text; ``**A write wins** (...)`` keeps its sentence under a heading."""
    out: list[str] = []
    previous = ""
    for line in markdown.splitlines():
        kept = line
        match = re.match(r"\*\*(?P<title>[^*]+?)\*\*(?P<rest>.*)$", line)
        if match and not previous.strip():
            title = match["title"]
            if title.endswith("."):
                out += ["#" * level + " " + title[:-1], ""]
                kept = match["rest"].lstrip()
            else:
                out += ["#" * level + " " + title, ""]
        out.append(kept)
        previous = kept
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Expand the markers of the pages in docs/ (see the module docstring)."""
    src = page.file.src_uri
    return _MARKER.sub(lambda m: _expand(m, src), markdown)


def on_files(files: Any, config: Any, **_: Any) -> Any:
    """Add the benchmark pages and charts, which live in benchmarks/, not in docs/."""
    pages = {
        "benchmarks/index.md": BENCHMARKS / "README.md",
        "benchmarks/results.md": BENCHMARKS / "results" / "SUMMARY.md",
    }
    for uri, source in pages.items():
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    for chart in sorted((BENCHMARKS / "results").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{chart.name}",
                                    abs_src_path=str(chart)))
    return files
