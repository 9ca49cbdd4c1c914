"""Accelerate launch configurations shipped with prefopt, for `accelerate launch --config_file`.

    accelerate launch --config_file "$(python -m prefopt.distributed ddp)" train.py
    accelerate launch --config_file "$(python -m prefopt.distributed ddp_cpu)" --num_processes 2 train.py

`prefopt.Trainer` is a `trl.DPOTrainer`, so it runs under each of these as TRL does; the README
says which of them has been run where (`VERIFIED`).
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "accelerate_configs"

# name -> where it has been run with prefopt.Trainer (the rest are parse-checked only).
VERIFIED = {
    "ddp_cpu": "2 CPU processes (gloo), tests/test_multiprocess.py",
    "ddp": "not yet run (no GPU machine so far)",
    "deepspeed_zero2": "not yet run (no GPU machine so far)",
    "deepspeed_zero3": "not yet run (no GPU machine so far)",
    "fsdp": "not yet run (no GPU machine so far)",
}


def list_accelerate_configs() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def accelerate_config_path(name: str) -> Path:
    """The path of a shipped accelerate config: "ddp", "ddp_cpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown accelerate config {name!r}; shipped: {', '.join(list_accelerate_configs())}")
    return path


def main(argv: list[str]) -> int:
    """``python -m prefopt.distributed NAME``: print the config's path (exit 0), or one line and exit 2."""
    try:
        if len(argv) != 1:
            raise ValueError(f"usage: python -m prefopt.distributed NAME  (one of {', '.join(list_accelerate_configs())})")
        print(accelerate_config_path(argv[0]))
        return 0
    except ValueError as error:
        print(f"prefopt.distributed: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
