"""Reading prompts: a bundled task's training prompts, a JSONL file with a ``prompt`` field per line, or a text
file with one prompt per line (what ``prefopt annotate`` / ``online`` / ``fdpg`` take as ``--prompts``)."""

from __future__ import annotations

import json
from pathlib import Path

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
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"{path}, line {number}: no 'prompt' field")
        prompts.append(row["prompt"])
    return prompts
