"""Standard `transformers.TrainerCallback`s for preference training.

    from prefopt.callbacks import PreferenceEvalCallback, ReferenceRefreshCallback
    trainer = Trainer(..., callbacks=[PreferenceEvalCallback(heldout, every_n_steps=50),
                                      ReferenceRefreshCallback(every_n_steps=100, mixup_alpha=0.6)])

Both need the trainer itself (to evaluate, to reach the reference model); `prefopt.Trainer` hands it
over by calling `bind_trainer(trainer)` after construction. Any other `TrainerCallback` works unchanged.

Running state lives with its owner and is checkpointed: a `StatefulCallback` (``state_dict`` /
``load_state_dict``) is saved in every checkpoint folder and restored by
``trainer.train(resume_from_checkpoint=...)``, so a resumed run continues exactly as the uninterrupted
one. A `LossStateCallback` is the running state of a loss: the trainer shows it every training batch
(``observe(batch)``) and overlays its ``loss_hyperparameters()`` on the configured ones at every step
(BCO's reward shift today; f-DPG's running log Z and baseline fit the same two methods).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import is_peft_model
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


class PreferenceEvalCallback(TrainerCallback):
    """Evaluate on a held-out preference set every ``every_n_steps`` optimizer steps.

    Logs TRL's metric names with ``metric_key_prefix`` (default ``heldout``): ``heldout_loss``,
    ``heldout_rewards/accuracies``, ``heldout_rewards/margins``, ... The latest values are kept in
    ``self.history`` as (step, metrics) pairs.
    """

    def __init__(self, eval_dataset, every_n_steps: int = 100, metric_key_prefix: str = "heldout"):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.eval_dataset = eval_dataset
        self.every_n_steps = every_n_steps
        self.metric_key_prefix = metric_key_prefix
        self.trainer = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def bind_trainer(self, trainer) -> None:
        self.trainer = trainer
        # tokenise once; `evaluate` recognises a tokenised dataset (and the reference cache avoids recomputation)
        self.eval_dataset = trainer._prepare_dataset(
            self.eval_dataset, trainer.processing_class, trainer.args, self.metric_key_prefix
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise RuntimeError("PreferenceEvalCallback needs prefopt.Trainer (which calls bind_trainer)")
        if state.global_step % self.every_n_steps == 0:
            # evaluating resets the loop's flags (should_log, ...) and the model's mode; this step's train
            # metrics are logged right after this callback, so both are restored
            was_training, flags = self.trainer.model.training, dict(vars(control))
            metrics = self.trainer.evaluate(self.eval_dataset, metric_key_prefix=self.metric_key_prefix)
            vars(control).update(flags)
            vars(self.trainer.control).update(flags)
            if was_training:
                self.trainer.model.train()
            self.history.append((state.global_step, metrics))
        return control


class ReferenceRefreshCallback(StatefulCallback):
    """TR-DPO reference refresh: every ``every_n_steps`` steps, ref <- alpha * policy + (1 - alpha) * ref.

    Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment" (arXiv 2404.09656);
    alpha = 1 is a hard copy. Needs a reference model held in memory (an explicit ``ref_model``, or the
    copy `prefopt.Trainer` makes of an in-memory model). Not supported, and refused at construction:
      * PEFT without ``ref_model``: the reference is the base model with the adapter disabled, which the
        policy shares, so it cannot move without moving the policy;
      * ``precompute_ref_log_probs=True``: the stored reference log-probs would be stale.
    The refreshed reference weights are part of the checkpoint (``state_dict``), so a resumed run
    scores against the same reference as the uninterrupted one.
    """

    def __init__(self, every_n_steps: int = 512, mixup_alpha: float = 0.6):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0.0 < mixup_alpha <= 1.0:
            raise ValueError(f"mixup_alpha must be in (0, 1], got {mixup_alpha}")
        self.every_n_steps = every_n_steps
        self.mixup_alpha = mixup_alpha
        self.trainer = None
        self.refreshes = 0

    def bind_trainer(self, trainer) -> None:
        if trainer.args.precompute_ref_log_probs:
            raise ValueError("ReferenceRefreshCallback cannot be used with precompute_ref_log_probs=True (stale cache)")
        if trainer.ref_model is None:
            how = (
                "with PEFT the reference is the adapter-disabled base model, shared with the policy"
                if is_peft_model(trainer.model)
                else "the loss needs no reference model"
            )
            raise ValueError(f"ReferenceRefreshCallback needs a reference model in memory; {how}. Pass ref_model=...")
        self.trainer = trainer

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.trainer is not None and state.global_step % self.every_n_steps == 0:
            policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
            reference = self.trainer.accelerator.unwrap_model(self.trainer.ref_model)
            for reference_parameter, policy_parameter in zip(reference.parameters(), policy.parameters(), strict=True):
                reference_parameter.mul_(1.0 - self.mixup_alpha).add_(policy_parameter, alpha=self.mixup_alpha)
            self.refreshes += 1
        return control

    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None:
            raise RuntimeError("ReferenceRefreshCallback needs prefopt.Trainer (which calls bind_trainer)")
        reference = self.trainer.accelerator.unwrap_model(self.trainer.ref_model)
        weights = {name: tensor.detach().cpu().clone() for name, tensor in reference.state_dict().items()}
        return {"refreshes": self.refreshes, "reference": weights}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refreshes = state["refreshes"]
        reference = self.trainer.accelerator.unwrap_model(self.trainer.ref_model)
        reference.load_state_dict(state["reference"])


class RewardShiftCallback(LossStateCallback):
    """Keeps a loss's reward-shift hyper-parameter at the running mean of the implicit rewards.

    BCO (Jung et al. 2024, arXiv:2404.04656) shifts its classifier logit by delta, a running mean of
    the rewards beta * (log pi - log pi_ref) of every response seen so far; TRL 1.16 dropped that
    state (delta = 0). With this callback the trainer supplies it:

        Trainer(..., args=PrefOptConfig(loss="bco_pair"), callbacks=[RewardShiftCallback()])

    Every training batch adds its rewards (with the loss's own beta) to a count-weighted running mean
    (``mean``, ``count``), and every step trains with ``delta = mean`` of the batches before it (one batch
    behind TRL's old in-step update). The state is checkpointed (``state_dict``).
    """

    def __init__(self, loss: str = "bco_pair", hyperparameter: str = "delta"):
        self.loss, self.hyperparameter = loss, hyperparameter
        self.beta: float | None = None
        self.count, self.mean = 0, 0.0

    def bind_trainer(self, trainer) -> None:
        if self.loss not in trainer.preference_loss.names:
            raise ValueError(f"RewardShiftCallback: loss {self.loss!r} is not trained here {list(trainer.preference_loss.names)}")
        hyperparameters = trainer.loss_hyperparameters[self.loss]
        if self.hyperparameter not in hyperparameters or "beta" not in hyperparameters:
            raise ValueError(f"RewardShiftCallback: loss {self.loss!r} needs hyper-parameters beta and {self.hyperparameter!r}")
        self.beta = hyperparameters["beta"]

    def observe(self, batch) -> None:
        if self.beta is None:
            raise RuntimeError("RewardShiftCallback needs prefopt.Trainer (which calls bind_trainer)")
        real = batch.mask if batch.mask is not None else torch.ones_like(batch.policy, dtype=torch.bool)
        rewards = self.beta * (batch.policy - batch.reference)[real].double()
        if rewards.numel() == 0:
            return
        total = self.count + rewards.numel()
        self.mean += (rewards.sum().item() - rewards.numel() * self.mean) / total
        self.count = total

    def loss_hyperparameters(self) -> dict[str, dict[str, Any]]:
        return {self.loss: {self.hyperparameter: self.mean}} if self.count else {}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean = int(state["count"]), float(state["mean"])
