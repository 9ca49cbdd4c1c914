"""Write the bundled task files under data/tasks/ (deterministic: a test regenerates and compares bytes).

    python -m prefopt.data.generate_tasks [--output-dir DIR]

For each task: 400 prompts (300 train, 100 test), each with 4 completions scored by the task's
ground-truth reward. Files: <task>_kwise_<split>.jsonl (completions best first, rewards as
scores), <task>_pairwise_<split>.jsonl (best vs a random strictly-worse completion),
<task>_noisy_train.jsonl (the pairwise train split with NOISE_RATE of its labels flipped, column
label_flipped), and manifest.json (sizes, seed, realised flip rates). The arithmetic task also gets
arithmetic_reasoning_<split>.jsonl (NUM_REASONING_TRAIN / NUM_REASONING_TEST BVPO rows: trace pairs with
worked traces and empty-trace pairs).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import datasets

from .noise import flip_labels
from .pairs import to_pairs
from .tasks import MANIFEST, REASONING_FILE, TASKS_DIR, _reasoning_rows, get_task, list_tasks

SEED = 20240611
NUM_TRAIN = 300
NUM_TEST = 100
NOISE_RATE = 0.2
NUM_REASONING_TRAIN = 200
NUM_REASONING_TEST = 50


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(directory: Path | str = TASKS_DIR) -> list[Path]:
    """Generate every task into ``directory``; returns the written paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written, manifest = [], {"seed": SEED, "generator": "python -m prefopt.data.generate_tasks", "tasks": {}}
    for task_index, name in enumerate(list_tasks()):
        task = get_task(name)
        rng = random.Random(SEED + task_index)
        rows = task.make_rows(rng, NUM_TRAIN + NUM_TEST)
        kwise = {"train": rows[:NUM_TRAIN], "test": rows[NUM_TRAIN:]}
        files: dict[str, dict[str, str]] = {"kwise": {}, "pairwise": {}, "noisy": {}}
        sizes: dict[str, dict[str, int]] = {"kwise": {}, "pairwise": {}, "noisy": {}}
        pairwise = {}
        for split, split_rows in kwise.items():
            split_rows = [{**row, "id": f"{name}-{split}-{i:04d}"} for i, row in enumerate(split_rows)]
            pairs = to_pairs(datasets.Dataset.from_list(split_rows), "best_vs_random", seed=SEED)
            pairwise[split] = pairs
            for form, data in (("kwise", split_rows), ("pairwise", pairs.to_list())):
                path = task.path(form, split, directory)
                _write_jsonl(path, data)
                files[form][split], sizes[form][split] = path.name, len(data)
                written.append(path)
        noisy = flip_labels(pairwise["train"], NOISE_RATE, seed=SEED)
        path = task.path("noisy", "train", directory)
        _write_jsonl(path, noisy.to_list())
        files["noisy"]["train"], sizes["noisy"]["train"] = path.name, len(noisy)
        written.append(path)
        manifest["tasks"][name] = {
            "description": task.description,
            "reward": task.reward_description,
            "completions_per_prompt": len(rows[0]["completions"]),
            "files": files,
            "rows": sizes,
            "noisy": {"requested_rate": NOISE_RATE, "flip_rate": sum(noisy["label_flipped"]) / len(noisy), "seed": SEED},
        }
    rng = random.Random(SEED + 1000)  # its own stream: the files above are unchanged by it
    rows = _reasoning_rows(rng, NUM_REASONING_TRAIN + NUM_REASONING_TEST)
    reasoning = {"train": rows[:NUM_REASONING_TRAIN], "test": rows[NUM_REASONING_TRAIN:]}
    manifest["reasoning"] = {
        "task": "arithmetic",
        "description": "BVPO rows: <think> worked trace + answer (rejected trace slips) and answers without reasoning",
        "files": {}, "rows": {},
    }
    for split, split_rows in reasoning.items():
        path = directory / REASONING_FILE.format(split=split)
        _write_jsonl(path, [{**row, "id": f"arithmetic-reasoning-{split}-{i:04d}"} for i, row in enumerate(split_rows)])
        manifest["reasoning"]["files"][split], manifest["reasoning"]["rows"][split] = path.name, len(split_rows)
        written.append(path)
    manifest_path = directory / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", newline="\n")
    return [*written, manifest_path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=TASKS_DIR, help=f"where to write (default {TASKS_DIR})")
    args = parser.parse_args(argv)
    for path in generate(args.output_dir):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
