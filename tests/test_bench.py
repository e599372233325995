"""bench/'s pure parts: the figures, the rate measurement, the report rows and the CLI's checks (no timing)."""
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402
from harness.measure import fmt_range, med, pct, steady_rate  # noqa: E402
from scenarios import FULL, QUICK, SCENARIOS  # noqa: E402


def test_figures() -> None:
    assert med([3.0, None, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert med([None]) == (None, None, None)
    assert fmt_range([1.5, 1.45, 2.0]) == "1.50 s (1.45–2.00)"
    assert fmt_range([1.5]) == "1.50 s"
    assert fmt_range([]) == "–"
    assert pct(list(range(1, 101)), 99) == 99
    assert pct(list(range(1, 201)), 99) == 198 and pct([5.0, 1.0], 50) == 1.0
    assert pct([], 50) is None


def test_steady_rate_measures_edge_to_edge() -> None:
    # a writer that adds 1,000 bytes each 0.1 s for 3 s, sampled every 0.05 s
    samples = [(i * 0.05, (i // 2) * 1000) for i in range(61)]
    rate, (start, end) = steady_rate(samples, total=30_000, skip=1.0)
    assert rate == pytest.approx(10_000)
    assert start >= 1.0 and end <= 3.0
    assert steady_rate([(0, 0), (1, 0)], total=10) == (None, None)


def test_ratios_are_per_repetition() -> None:
    m, text = report.ratios([2.0, 4.0, 3.0], [1.0, 1.0, 2.0])
    assert m == 2.0 and text == "2.00 (1.50–4.00)"
    assert report.ratios([], []) == (None, "–")


def test_library_rows_say_not_available() -> None:
    res = {"files": 200, "bytes": 50 << 20, "cores": 2, "peer": [0.2, 0.3], "unavailable": "POST /api/library/scan answered 404"}
    rows = []
    report.library_rows(res, QUICK, rows)
    assert len(rows) == 1 and "not available: POST /api/library/scan answered 404" in rows[0][1]
    assert rows[0][-1] == "–"


def test_library_rows_check_the_targets() -> None:
    res = {"files": 2000, "bytes": 2 << 30, "cores": 2, "many": 20000,
           "first": [4.0, 4.2, 3.9, 4.1, 4.0], "peer": [4.0] * 5, "first_rss": [80 << 20] * 5,
           "rescan": [0.4] * 5, "cold_first": [], "cold_peer": [], "many_rescan": [6.0] * 5, "many_floor": [0.1] * 5}
    rows = []
    report.library_rows(res, FULL, rows)
    met = {row[0]: row[-1] for row in rows}
    assert met["library first scan, 2000 files, 2048 MiB, page cache"] == "yes"   # 1.0 ≥ 0.9
    assert met["library rescan, no change, 2000 files"] == "yes"
    assert met["library rescan, no change, 20000 files"] == "**no**"            # 6 s ≥ 5 s
    assert met["peak RSS, library first scan"] == "yes"


def test_every_scenario_has_a_report_and_sizes() -> None:
    assert set(report.ROWS) == set(SCENARIOS)
    assert {"capped", "ingest", "library"} <= set(SCENARIOS)
    assert FULL["reps"] >= 5 and FULL["cap"] == "20m" and FULL["capped"] == 1 << 30 and FULL["ingest_n"] == 1000


def test_cli_refuses_an_unknown_scenario() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", "single,warp"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown scenario(s): warp" in result.stderr
