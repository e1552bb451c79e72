"""The bounded load test as users run it (benchmarks/serving_load.py): loopback, a fixed count and time, a table
of requests/s and latency percentiles, and the log checked to hold every answered request. Speed is a
benchmark figure (docs/serving.md), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "serving_load.py"


def test_the_load_benchmark_reports_throughput_and_p99_and_checks_the_log(served, tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARK), "--record", str(served.record), "--client", "python",
                           "--seconds", "3", "--max-requests", "300",
                           "--concurrency", "4", "--json", str(tmp_path / "load.json")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "| requests/s | p50 ms | p99 ms |" in done.stdout
    row = json.loads((tmp_path / "load.json").read_text())
    assert 0 < row["requests"] <= 300 + 4 and row["logged"] >= row["requests"] and 0 < row["p50_ms"] <= row["p99_ms"]
