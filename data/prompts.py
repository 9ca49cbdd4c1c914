"""Reading prompts: a bundled task's training prompts, a JSONL file with a ``prompt`` field per line, or a text
file with one prompt per line (what ``prefopt annotate`` / ``online`` / ``fdpg`` take as ``--prompts``)."""

from __future__ import annotations

from pathlib import Path

from .loading import _iter_json_lines
from .tasks import get_task, list_tasks


def read_prompts(source: str) -> list:
    """The prompts of ``source``: a bundled task name, a ``.jsonl`` file (a ``prompt`` per line: text or messages)
    or any other file (one prompt per non-empty line). A missing file, or a line that is not JSON or has no
    ``prompt``, raises a ValueError naming the file and the line."""
    if source in list_tasks():
        return list(get_task(source).load("pairwise", split="train")["prompt"])
    path = Path(source)
    if not path.exists():
        raise ValueError(f"--prompts {source!r} is neither a bundled task ({', '.join(list_tasks())}) nor a file")
    if path.suffix != ".jsonl":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = []
    for where, row in _iter_json_lines(path):  # the one JSON-lines reader: errors name the file and the line
        if "prompt" not in row:
            raise ValueError(f"{where}: no 'prompt' field")
        prompts.append(row["prompt"])
    return prompts
