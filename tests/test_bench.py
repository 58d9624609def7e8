"""The benchmark harness runs end to end at its quick size (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.results import REQUIRED

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = "features.materialize_10m_vs_pandas"


def test_features_quick_records_an_entry_and_a_table(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    other = {"loopline": 4.2, "peer": 61.0, "unit": "s", "higher_is_better": False,
             "peer_name": "a peer 1.0", "advantage": 14.52, "rows": 10, "machine": "2 cores, 24 GiB",
             "date": "2026-11-23", "command": "python -m bench other"}
    results.write_text(json.dumps({"other.workload": other}))
    done = subprocess.run([sys.executable, "-m", "bench", "features", "--quick",
                           "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr

    data = json.loads(results.read_text())
    assert data["other.workload"] == other  # other entries are kept
    item = data[WORKLOAD]
    assert set(REQUIRED) <= set(item)
    assert item["unit"] == "rows/s" and item["higher_is_better"] is True
    assert item["rows"] == 200_000
    assert item["loopline"] > 0 and item["peer"] > 0
    assert item["advantage"] == pytest.approx(item["loopline"] / item["peer"], abs=0.01)
    assert item["peer_name"].startswith("pandas ")
    assert item["command"] == "python -m bench features --quick"
    assert item["loopline_peak_mb"] > 0 and item["peer_peak_mb"] > 0

    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| `{WORKLOAD}`"))
    assert item["peer_name"] in row and f"{item['advantage']:.2f}x" in row
    assert "python -m bench features --quick" in table
    assert "| `other.workload` |" in table and "python -m bench other" in table
