"""The folder of an online run: what has been done, and what a resumed run reads back.

    folder = RunFolder("runs/inpo")
    state = folder.state(settings)                        # rounds done, history; refuses other settings
    rows = folder.shared("round-1/round_data.json", compute)   # computed once, by the main process, saved

A run resumes by reading its folder: ``online_state.json`` (rounds done, per-round metrics, the settings that
define the run), each round's saved data and metrics, the policy snapshot of the last round, and the latest
HF checkpoint inside an interrupted round. Under ``accelerate launch`` only the main process writes; every
process reads the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

STATE_FILE = "online_state.json"


def atomic_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` so that a reader never sees half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


def distributed_state():
    from accelerate import PartialState

    return PartialState()


class RunFolder:
    """``output_dir`` of an online run (created if missing)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def round_folder(self, round_number: int) -> Path:
        folder = self.path / f"round-{round_number}"
        folder.mkdir(exist_ok=True)
        return folder

    def state(self, settings: dict) -> dict:
        """The saved state (``rounds_done``, ``history``, ``settings``), or a fresh one; a folder written by a run
        with other ``settings`` is refused."""
        fresh = {"rounds_done": 0, "history": [], "settings": settings}
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else fresh
        if state["settings"] != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{self.state_path} was written by a run with other settings {state['settings']}; use another "
                f"output_dir or the same settings ({settings}) to resume it"
            )
        return state

    def save_state(self, state: dict) -> None:
        if distributed_state().is_main_process:
            atomic_json(self.state_path, state)

    def shared(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` run once, by the main process, and saved to ``name`` under the folder (unless a previous,
        interrupted run saved it); every process then reads the same value. Under ``accelerate launch`` sampling,
        ranking and evaluation thus happen once and every process trains on the same rows."""
        path = self.path / name
        state = distributed_state()
        if not path.exists() and state.is_main_process:
            atomic_json(path, compute())
        state.wait_for_everyone()
        return json.loads(path.read_text())

    def latest_checkpoint(self, round_number: int) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        folder = self.path / f"round-{round_number}"
        return get_last_checkpoint(str(folder)) if folder.is_dir() else None

    def save_policy(self, model, round_number: int) -> None:
        """The round's policy snapshot: adapter weights (PEFT) or the full model, in save_pretrained's format."""
        if distributed_state().is_main_process:
            model.save_pretrained(self.round_folder(round_number) / "policy")

    def load_policy(self, model, round_number: int) -> None:
        """Load round ``round_number``'s snapshot into ``model`` (tied weights, saved once, come back through their twin)."""
        load_policy(model, self.path / f"round-{round_number}" / "policy")


def load_policy(model, folder: Path) -> None:
    """Load a ``save_pretrained`` snapshot into ``model`` (tied weights, saved once, are restored through their twin)."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        set_peft_model_state_dict(model, load_peft_weights(str(folder)))
        return
    if not (folder / "model.safetensors").exists():
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(folder))
        return
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    current = model.state_dict()
    loaded = {current[key].data_ptr() for key in state if key in current}
    untied_missing = [key for key in result.missing_keys if current[key].data_ptr() not in loaded]
    if untied_missing or result.unexpected_keys:
        raise ValueError(
            f"snapshot {folder} does not match the model: missing {untied_missing}, unexpected {result.unexpected_keys}"
        )
