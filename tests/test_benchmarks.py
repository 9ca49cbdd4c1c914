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
def test_throughput_smoke_runs_both_trainers_and_reports(tmp_path):
    """The CI smoke mode: TRL and prefopt (pairs, and K=4 rankings) side by side on a tiny model."""
    pytest.importorskip("matplotlib")
    benchmark = load("throughput")
    rows = benchmark.main(["--smoke", "--output", str(tmp_path), "--trainers", "trl,prefopt,prefopt_k4"])
    by_trainer = {row["trainer"]: row for row in rows}
    assert set(by_trainer) == {"trl", "prefopt", "prefopt_k4"}
    assert by_trainer["trl"]["pairs_per_second_vs_trl"] == pytest.approx(1.0)
    assert by_trainer["prefopt"]["pairs_per_second_vs_trl"] > 0
    assert by_trainer["prefopt"]["packing_fallback"] is None  # the packed path really ran
    assert by_trainer["prefopt_k4"]["k4_over_pair"] > 0
    report = json.loads((tmp_path / "throughput_smoke.json").read_text())
    assert report["environment"]["trl"] and report["environment"]["torch"]
    assert all(run["peak_memory_gib"] > 0 for run in report["runs"])
    assert (tmp_path / "throughput_smoke.md").read_text().startswith("Training throughput")
    assert (tmp_path / "throughput_smoke.png").stat().st_size > 0
    assert not (tmp_path / "throughput_smoke.partial.json").exists()
