"""The README's trainer section runs as written (blocks in order, one namespace, in a scratch directory)."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_trainer_section_examples_run(tmp_path, monkeypatch):
    section = re.search(r"<!-- trainer:start -->(.*?)<!-- trainer:end -->", README, flags=re.DOTALL).group(1)
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the examples write to ./out
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md (trainer)", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 2
    assert "loss/rdpo" in namespace["trainer"].state.log_history[0]
