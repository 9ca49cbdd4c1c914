"""Running state that lives with its owner and is checkpointed with the run.

A `StatefulCallback` (``state_dict`` / ``load_state_dict``) is saved in every checkpoint folder and restored by
``trainer.train(resume_from_checkpoint=...)``, so a resumed run continues exactly as the uninterrupted one. A
`LossStateCallback` is the running state of a loss: the trainer shows it every training batch
(``before_loss(trainer, batch)`` before the loss, ``observe(batch)`` after) and overlays its
``loss_hyperparameters()`` on the configured ones at every step (BCO's reward shift, BVPO's auto alpha, f-DPG's
running log Z and baseline).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import TrainerCallback

# Where running loss state (stateful callbacks' `state_dict()`) is stored inside each checkpoint folder.
LOSS_STATE_FILE = "prefopt_loss_state.pt"


# ------------------------------------------------------------------------------------------- protocols


@runtime_checkable
class BindsTrainer(Protocol):
    """A callback given the trainer after construction (``bind_trainer(trainer)``), to evaluate, sample or read
    the reference."""

    def bind_trainer(self, trainer) -> None: ...


@runtime_checkable
class Stateful(Protocol):
    """Running state saved in every checkpoint and restored on resume."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class RunningLossState(Protocol):
    """Running state of a loss: shown every training batch, overlaying the configured hyper-parameters."""

    def before_loss(self, trainer, batch) -> None: ...

    def observe(self, batch) -> None: ...

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]: ...


# ---------------------------------------------------------------------------------------- base classes


class StatefulCallback(TrainerCallback):
    """A callback whose running state is saved with every checkpoint and restored on resume (`Stateful`)."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class LossStateCallback(StatefulCallback):
    """Running state of a loss: updated from every training batch, read by the loss at every step
    (`RunningLossState`)."""

    def before_loss(self, trainer, batch) -> None:
        """Called by the trainer in each training step with the `LogProbs` batch (still attached to the graph)
        before the loss is computed, for state that must describe this very batch (e.g. BVPO's auto alpha)."""

    def observe(self, batch) -> None:
        """Called by the trainer after each training forward with the (detached) `LogProbs` batch."""

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """Hyper-parameters overriding the configured ones this step, by loss name."""
        return {}


# ------------------------------------------------------------------------------- the trainer's loss state


class LossState:
    """The running state of a run's losses, held by its callbacks (``callbacks``: the trainer's list, read live):
    the per-step hyper-parameters, the two per-batch hooks, and the checkpoint file of every stateful callback."""

    def __init__(self, callbacks: list, configured: dict[str, dict[str, Any]]):
        self._callbacks, self.configured = callbacks, configured

    @property
    def loss_callbacks(self) -> list:
        return [callback for callback in self._callbacks if isinstance(callback, RunningLossState)]

    def step_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """The hyper-parameters of this step: the configured ones (never overwritten), overlaid with each loss-state
        callback's ``loss_hyperparameters()`` (e.g. BCO's delta, BVPO's auto alpha)."""
        resolved = {name: dict(values) for name, values in self.configured.items()}
        for callback in self.loss_callbacks:
            for name, values in callback.loss_hyperparameters().items():
                resolved[name].update(values)
        return resolved

    def before_loss(self, trainer, batch) -> None:
        for callback in self.loss_callbacks:
            callback.before_loss(trainer, batch)

    def observe(self, batch) -> None:
        for callback in self.loss_callbacks:
            callback.observe(batch)

    def stateful(self) -> dict[str, Any]:
        """Callbacks with running state, keyed by position and class (the same callbacks must be passed on resume)."""
        stateful = [callback for callback in self._callbacks if isinstance(callback, Stateful)]
        return {f"{index}:{type(callback).__name__}": callback for index, callback in enumerate(stateful)}

    def save(self, checkpoint_folder: str) -> None:
        stateful = self.stateful()
        if stateful:
            state = {key: callback.state_dict() for key, callback in stateful.items()}
            torch.save(state, os.path.join(checkpoint_folder, LOSS_STATE_FILE))

    def load(self, checkpoint_folder: str) -> None:
        """Restore every stateful callback from a checkpoint; a checkpoint without the file, or with the state of
        other callbacks, is refused (resuming would not continue the interrupted run)."""
        stateful = self.stateful()
        if not stateful:
            return
        path = os.path.join(checkpoint_folder, LOSS_STATE_FILE)
        if not os.path.exists(path):
            raise ValueError(
                f"checkpoint {checkpoint_folder} has no {LOSS_STATE_FILE}, but callbacks {list(stateful)} keep "
                "running state; resuming without it would not continue the interrupted run"
            )
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if set(saved) != set(stateful):
            raise ValueError(
                f"checkpoint {checkpoint_folder} holds the state of callbacks {sorted(saved)}, this trainer has "
                f"{sorted(stateful)}; pass the same stateful callbacks, in the same order, to resume"
            )
        for key, callback in stateful.items():
            callback.load_state_dict(saved[key])
