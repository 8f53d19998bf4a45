"""The docs site: the settings reference is generated from ``CacheConfig`` and the API
reference from ``fleetcache.__all__``, so neither can drift from the code.

The generator is the mkdocs hook itself (docs/hooks/fleetcache_docs.py); one test builds the
whole site (``mkdocs build --strict``, about 2 s) and reads the settings page it wrote.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import fleetcache
from fleetcache import CacheConfig

pytest.importorskip("mkdocs", reason="the docs extra is not installed")

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "docs" / "hooks" / "fleetcache_docs.py"
FIELDS = [f.name for f in dataclasses.fields(CacheConfig)]


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetcache_docs", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        match = re.match(r'\| <a id="(\w+)"></a>`\1` \| (.*) \|$', line)
        if match:
            # cells split at pipes outside code spans (a type reads `float | None`)
            cells = re.findall(r"(?:`[^`]*`|\\\||[^|`])+", match[2])
            rows[match[1]] = [cell.strip() for cell in cells]
    return rows


def test_settings_reference_has_every_field_with_type_default_and_meaning() -> None:
    hook = _hook()
    rows = _rows(hook.settings_reference())
    assert list(rows) == FIELDS
    meanings = hook.setting_docs()
    for field in dataclasses.fields(CacheConfig):
        kind, default, meaning = rows[field.name]
        assert kind == f"`{field.type}`"
        shown = default.split("`")[1]  # `16_777_216` (16 MiB): the code part
        assert shown == repr(field.default) or (
            isinstance(field.default, int) and shown == f"{field.default:_}"), default
        assert meaning and meanings[field.name]


def test_a_field_without_a_docstring_entry_fails_the_generator() -> None:
    @dataclass(frozen=True)
    class Config:
        """Settings.

        Attributes:
            documented: has a line.
            gone: describes no field.
        """

        documented: int = 1
        undocumented: float = 2.0

    with pytest.raises(ValueError, match=r"undocumented.*gone"):
        _hook().settings_reference(Config)


def test_api_reference_renders_every_public_name() -> None:
    blocks = re.findall(r"^::: fleetcache\.(\w+)$", _hook().api_reference(), re.MULTILINE)
    assert sorted(blocks) == sorted(fleetcache.__all__)


def test_the_pages_use_the_generators() -> None:
    settings = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "<!-- settings-reference -->" in settings
    assert "<!-- api-reference -->" in api
    assert "docs/hooks/fleetcache_docs.py" in mkdocs_yml
    assert re.search(r"^  - Settings reference: settings\.md$", mkdocs_yml, re.MULTILINE)


def test_built_settings_page_lists_every_field(tmp_path: Path) -> None:
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
         str(site)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    page = (site / "settings" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in FIELDS
               if f'<a id="{name}"></a><code>{name}</code>' not in page]
    assert not missing, missing
