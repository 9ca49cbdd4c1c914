"""Benchmark scripts run end to end (at tiny settings) and write JSON, a table and a plot."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(script):
    spec = importlib.util.spec_from_file_location(script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_noise_robustness_runs_and_reports(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    benchmark = load("noise_robustness")
    for name, value in {"SEEDS": [0], "FLIP_RATES": [0.0, 0.3], "STEPS": 30, "TRAIN_PROMPTS": 200,
                        "TEST_PROMPTS": 50, "OUTPUT": tmp_path}.items():
        monkeypatch.setattr(benchmark, name, value)
    benchmark.main()
    report = json.loads((tmp_path / "noise_robustness.json").read_text())
    assert {row["loss"] for row in report["summary"]} == set(benchmark.LOSSES)
    clean = {row["loss"]: row["expected_true_reward"] for row in report["summary"] if row["flip_rate"] == 0.0}
    assert clean["dpo"] == pytest.approx(clean["rdpo"]) == pytest.approx(clean["cdpo"])  # eps = 0: same loss
    assert report["environment"]["torch"]
    assert (tmp_path / "noise_robustness.md").read_text().startswith("Expected true reward")
    assert (tmp_path / "noise_robustness.png").stat().st_size > 0


@pytest.mark.slow
def test_large_source_memory_smoke_runs_and_reports(tmp_path):
    pytest.importorskip("matplotlib")
    benchmark = load("large_source_memory")
    results = benchmark.main(["--smoke", "--output", str(tmp_path)])
    assert [row["mode"] for row in results] == ["python objects (before)", "map-style", "map-style", "streaming"]
    assert all(row["rows"] > 0 for row in results)
    report = json.loads((tmp_path / "large_source_memory.json").read_text())
    assert report["smoke"] is True and report["environment"]["pyarrow"]
    assert (tmp_path / "large_source_memory.md").read_text().startswith("Peak memory of load_preferences")
    assert (tmp_path / "large_source_memory.png").stat().st_size > 0
