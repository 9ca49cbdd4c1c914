"""Running state that lives with its owner and is checkpointed with the run.

A `StatefulCallback` (``state_dict`` / ``load_state_dict``) is saved in every checkpoint folder and restored by
``trainer.train(resume_from_checkpoint=...)``, so a resumed run continues exactly as the uninterrupted one. A
`LossStateCallback` is the running state of a loss: the trainer shows it every training batch
(``before_loss(trainer, batch)`` before the loss, ``observe(batch)`` after) and overlays its
``loss_hyperparameters()`` on the configured ones at every step (BCO's reward shift, BVPO's auto alpha, f-DPG's
running log Z and baseline).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class StatefulCallback(TrainerCallback):
    """A callback whose running state is saved with every checkpoint and restored on resume."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class LossStateCallback(StatefulCallback):
    """Running state of a loss: updated from every training batch, read by the loss at every step."""

    def before_loss(self, trainer, batch) -> None:
        """Called by the trainer in each training step with the `LogProbs` batch (still attached to the graph)
        before the loss is computed, for state that must describe this very batch (e.g. BVPO's auto alpha)."""

    def observe(self, batch) -> None:
        """Called by the trainer after each training forward with the (detached) `LogProbs` batch."""

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """Hyper-parameters overriding the configured ones this step, by loss name."""
        return {}
