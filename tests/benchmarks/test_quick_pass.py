"""The benchmark suite's ``--quick`` pass, as CI runs it.

Every benchmark must run to the end, write its JSON with goal verdicts, and the PNG charts
and SUMMARY.md must render. Speed goals may be missed on a loaded CI machine (they are
judged on the full run, committed in benchmarks/results/); correctness goals may not: one
compute per stampede, no lost invalidation, no failed request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]
CORRECTNESS = ("exactly 1 compute", "zero lost invalidations", "zero errors")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_pass_runs_every_benchmark_and_renders(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for name in BENCHMARKS:
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["quick"] is True
        assert doc["machine"]["cpu_count"] >= 1
        assert doc["goals"], f"{name} judged no goal"
        for goal in doc["goals"]:
            if any(text in goal["goal"] for text in CORRECTNESS):
                assert goal["met"] is True, f"{name}: {goal}"
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "## Goals" in summary
    assert all(f"{name}.png" in summary for name in BENCHMARKS)
