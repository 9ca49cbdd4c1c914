"""The README's data section: its Python examples run, in order, in one namespace, as a reader would paste them."""

import os
import re
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_name, "1")

from prefopt.data import list_formats, list_metrics, list_tasks  # noqa: E402

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def data_section() -> str:
    match = re.search(r"<!-- data:start -->(.*?)<!-- data:end -->", README, flags=re.DOTALL)
    assert match, "README has no data section"
    return match.group(1)


def test_data_section_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", data_section(), flags=re.DOTALL)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md (data section)", "exec"), namespace)
    assert namespace["estimate"].compared == 50


def test_data_section_names_every_format_task_and_metric():
    section = data_section()
    for name in [*list_formats(), *list_tasks(), *list_metrics()]:
        assert f"`{name}`" in section, name
