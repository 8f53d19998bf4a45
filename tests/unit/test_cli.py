"""The fleetcache command: subcommands, --help, python -m, and a missing extra in one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

import pytest

from fleetcache import cli
from fleetcache.cli import extras


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "FLEETCACHE_REDIS_URL" in out


def test_demo_help_explains_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--worker-class" in out and "embedded" in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_python_dash_m_is_the_same_command() -> None:
    run = subprocess.run([sys.executable, "-m", "fleetcache", "--version"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and run.stdout.startswith("fleetcache "), run.stderr


def test_a_missing_extra_is_one_line_naming_the_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def without_rich(name: str, *args: Any) -> Any:
        return None if name == "rich" else real(name, *args)

    monkeypatch.setattr(extras.importlib.util, "find_spec", without_rich)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "fleetcache demo: needs rich (the 'demo' extra): pip install 'fleetcache[demo]'" in err


def test_workers_below_two_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", "--workers", "1"])
    assert exited.value.code == 2
    assert "--workers must be at least 2" in capsys.readouterr().err
