"""Smoke test of the performance benchmarks: ``python -m benchmarks.run --quick`` runs and writes its table and JSON.

It asserts only that every benchmark ran and is reported, not any figure (figures from tiny sizes
on a shared machine mean nothing; ``make bench`` records the real ones).
"""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO

NAMES = ["training_overhead", "data_pipeline", "mc_dropout", "ensemble_evaluation", "simulator", "exact_posterior",
         "scaling", "gpu"]


def test_bench_quick_writes_table_and_json(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    data = json.loads((out / "performance.json").read_text())
    table = (out / "RESULTS.md").read_text()
    for name in NAMES:
        assert name in data, f"{name} missing from performance.json"
        assert "ratio" in data[name] and "target" in data[name], data[name]
        assert "error" not in data[name], data[name]["error"]
        assert f"`{name}`" in table, f"{name} missing from RESULTS.md"
    assert "## Physical limit (statistical benchmark)" in table
    assert "not measured" in data["gpu"].get("status", "") or data["gpu"]["ratio"] is not None
