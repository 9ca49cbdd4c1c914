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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m prefopt.distributed NAME  (one of {', '.join(list_accelerate_configs())})")
    try:
        print(accelerate_config_path(sys.argv[1]))
    except ValueError as error:
        raise SystemExit(str(error)) from None
