"""Standard `transformers.TrainerCallback`s for preference training.

    from prefopt.callbacks import PreferenceEvalCallback, ReferenceRefreshCallback
    trainer = Trainer(..., callbacks=[PreferenceEvalCallback(heldout, every_n_steps=50),
                                      ReferenceRefreshCallback(every_n_steps=100, mixup_alpha=0.6)])

Both need the trainer itself (to evaluate, to reach the reference model); `prefopt.Trainer` hands it
over by calling `bind_trainer(trainer)` after construction. Any other `TrainerCallback` works unchanged.

Sampling callbacks (generation with `prefopt.online.generate`, judged by `prefopt.online.rewards`):

    WinRateCallback(prompts, reward_or_oracle, every_n_steps=100, n=1)   # logs win_rate and its interval
    SampleTableCallback(prompts, every_n_steps=100)                      # completions as a tracker table

Running state lives with its owner and is checkpointed (`StatefulCallback`, `LossStateCallback`, defined in
`prefopt.training.state` and importable from here): saved in every checkpoint folder and restored by
``trainer.train(resume_from_checkpoint=...)``, so a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import TrainerCallback

from prefopt.chat import display_text
from prefopt.online.evaluation import compare_samples, is_oracle
from prefopt.online.sampling import SamplingConfig, generate
from prefopt.training.reference import Reference, full_parameters, mix_into
from prefopt.training.state import LossStateCallback, StatefulCallback  # noqa: F401  (public here too)


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
        # checked and tokenised once; `evaluate` recognises a tokenised dataset (the reference cache avoids recomputation)
        self.eval_dataset = trainer.prepare_dataset(self.eval_dataset, self.metric_key_prefix)

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
    copy `prefopt.Trainer` makes of an in-memory model). Under DeepSpeed ZeRO-3 the sharded parameters of both
    models are gathered before they are mixed (as TRL's ``SyncRefModelCallback``), never mixed shard by shard.
    Not supported, and refused at construction:
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
        if trainer.reference.kind != "model":
            how = {
                "base": "with PEFT the reference is the adapter-disabled base model, shared with the policy",
                "ref_adapter": "with PEFT the reference is the policy's frozen 'ref' adapter, not a model of its own",
            }.get(trainer.reference.kind, "the loss needs no reference model")
            raise ValueError(f"ReferenceRefreshCallback needs a reference model in memory; {how}. Pass ref_model=...")
        self.trainer = trainer

    def _models(self):
        unwrap = self.trainer.accelerator.unwrap_model
        return unwrap(self.trainer.model), unwrap(self.trainer.reference.model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.trainer is not None and state.global_step % self.every_n_steps == 0:
            policy, reference = self._models()
            mix_into(reference, policy, self.mixup_alpha, self.trainer.accelerator)
            self.refreshes += 1
        return control

    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None:
            raise RuntimeError("ReferenceRefreshCallback needs prefopt.Trainer (which calls bind_trainer)")
        _, reference = self._models()
        with full_parameters([reference], self.trainer.accelerator):
            weights = {name: tensor.detach().cpu().clone() for name, tensor in reference.state_dict().items()}
        return {"refreshes": self.refreshes, "reference": weights}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refreshes = state["refreshes"]
        _, reference = self._models()
        with full_parameters([reference], self.trainer.accelerator, modifier_rank=0):
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


# ----------------------------------------------------------------------------- sampling callbacks


def _unwrapped_policy(trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


def _check_prompts(name: str, prompts, every_n_steps: int) -> list:
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{name} needs at least one prompt")
    if every_n_steps < 1:
        raise ValueError(f"{name}: every_n_steps must be >= 1, got {every_n_steps}")
    return prompts


class WinRateCallback(StatefulCallback):
    """Every ``every_n_steps`` steps, the policy's win rate against the reference on held-out prompts.

    Samples ``n`` responses per prompt from the policy and from the reference with
    `prefopt.online.generate` (``sampling``, a `prefopt.online.SamplingConfig`, or keyword options overriding
    it; same seed per evaluation, so both sides draw the same random numbers), judges each (policy, reference)
    pair under ``judge`` (any `prefopt.online.rewards` reward ``(prompts, responses) -> [N]`` or oracle
    ``(prompts, first, second) -> P(first > second)``; `prefopt.online.evaluation.compare_samples`), and logs
    through the trainer's log (so every ``report_to`` tracker gets it) ``{prefix}`` (the mean win, ties count
    half), ``{prefix}_ci_low`` / ``{prefix}_ci_high`` (the Wilson interval of `prefopt.data.win_rate` at
    ``confidence``, treating every comparison as independent), ``{prefix}_ties`` and ``{prefix}_count``.

    The reference is ``reference`` when given, else the trainer's (`prefopt.training.reference.Reference`: its
    ``ref_model``, or the PEFT policy with its adapter switched), else, when the run has no reference model in
    memory, a frozen copy of the policy taken when the trainer is built; ``self.against`` holds it (a
    `prefopt.training.reference.Reference`) once the trainer is bound. ``self.history``
    keeps (step, metrics) and is checkpointed; the evaluation at step ``s`` samples with seed ``seed + s``, so a
    resumed run logs what the uninterrupted one would.
    """

    def __init__(
        self,
        prompts,
        judge,
        *,
        every_n_steps: int = 100,
        sampling: SamplingConfig | None = None,
        confidence: float = 0.95,
        reference=None,
        metric_key_prefix: str = "win_rate",
        **sampling_options: Any,
    ):
        self.prompts = _check_prompts("WinRateCallback", prompts, every_n_steps)
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"WinRateCallback: confidence must be in (0, 1), got {confidence}")
        self.judge, self.oracle = judge, is_oracle(judge)
        self.every_n_steps, self.confidence = every_n_steps, confidence
        self.sampling = SamplingConfig.of(sampling, **sampling_options)
        self.reference, self.metric_key_prefix = reference, metric_key_prefix
        self.trainer = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def bind_trainer(self, trainer) -> None:
        self.trainer = trainer
        # a reference-free loss keeps no reference (nor does precomputation): compare against the policy as it starts
        self.against = Reference.separate(self.reference) if self.reference is not None else trainer.reference.frozen_copy()

    def _reference_samples(self, seed: int) -> list[list[str]]:
        with self.against.active() as model:
            model = self.trainer.accelerator.unwrap_model(model)
            return generate(model, self.trainer.processing_class, self.prompts, self.sampling.replace(seed=seed), progress=False)

    def evaluate(self, step: int) -> dict[str, float]:
        """Sample both sides, judge them, log and return the metrics (also called by `on_step_end`)."""
        if self.trainer is None:
            raise RuntimeError("WinRateCallback needs prefopt.Trainer (which calls bind_trainer)")
        seed = self.sampling.seed + step
        policy = generate(_unwrapped_policy(self.trainer), self.trainer.processing_class, self.prompts,
                          self.sampling.replace(seed=seed), progress=False)
        reference = self._reference_samples(seed)
        try:
            result = compare_samples(self.judge, self.prompts, policy, reference, confidence=self.confidence, oracle=self.oracle)
        except ValueError as error:
            raise ValueError(f"WinRateCallback at step {step}: {error}") from None
        prefix = self.metric_key_prefix
        metrics = {
            prefix: result.mean,
            f"{prefix}_ci_low": result.low,
            f"{prefix}_ci_high": result.high,
            f"{prefix}_ties": result.ties,
            f"{prefix}_count": result.count,
        }
        self.trainer.log_values(metrics)
        self.history.append((step, metrics))
        return metrics

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self.evaluate(state.global_step)
        return control

    def state_dict(self) -> dict[str, Any]:
        return {"history": [(step, dict(metrics)) for step, metrics in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(step), dict(metrics)) for step, metrics in state["history"]]


class SampleTableCallback(StatefulCallback):
    """Every ``every_n_steps`` steps, sample the policy on ``prompts`` and log the completions as a table.

    Rows are ``step, prompt, sample, completion`` (plus ``reward`` when a ``reward`` is given), and the
    table holds every row logged so far (the rows are checkpointed, so a resumed run continues it). It
    goes to each tracker in ``report_to`` (default: the trainer's ``args.report_to``), imported lazily:
    ``wandb`` (a ``wandb.Table`` under ``table_name``), ``trackio`` (a ``trackio.Table``),
    ``tensorboard`` (a markdown table as text, through transformers' TensorBoard writer). When none of
    them takes it (no tracker, or only trackers without tables), or when ``jsonl_path`` is given, the rows
    are appended to a JSONL file (default ``{output_dir}/{table_name}.jsonl``). ``self.rows`` holds them.
    """

    TRACKERS = ("wandb", "trackio", "tensorboard")

    def __init__(
        self,
        prompts,
        *,
        every_n_steps: int = 100,
        sampling: SamplingConfig | None = None,
        reward=None,
        report_to: list[str] | str | None = None,
        table_name: str = "samples",
        jsonl_path: str | None = None,
        **sampling_options: Any,
    ):
        self.prompts = _check_prompts("SampleTableCallback", prompts, every_n_steps)
        self.every_n_steps, self.reward = every_n_steps, reward
        self.sampling = SamplingConfig.of(sampling, **sampling_options)
        self.report_to = [report_to] if isinstance(report_to, str) else report_to
        self.table_name, self.jsonl_path = table_name, jsonl_path
        self.trainer = None
        self.rows: list[dict[str, Any]] = []

    @property
    def columns(self) -> list[str]:
        return ["step", "prompt", "sample", "completion"] + (["reward"] if self.reward is not None else [])

    def bind_trainer(self, trainer) -> None:
        self.trainer = trainer
        if self.report_to is None:
            self.report_to = [name for name in (trainer.args.report_to or []) if name not in ("none", "all")]
            if "all" in (trainer.args.report_to or []):
                self.report_to = list(self.TRACKERS)

    def sample(self, step: int) -> list[dict[str, Any]]:
        """This step's rows (sampled with seed ``seed + step``); also called by `on_step_end`."""
        if self.trainer is None:
            raise RuntimeError("SampleTableCallback needs prefopt.Trainer (which calls bind_trainer)")
        samples = generate(_unwrapped_policy(self.trainer), self.trainer.processing_class, self.prompts,
                           self.sampling.replace(seed=self.sampling.seed + step), progress=False)
        rows = [
            {"step": step, "prompt": display_text(prompt), "sample": k, "completion": completion}
            for prompt, completions in zip(self.prompts, samples)
            for k, completion in enumerate(completions)
        ]
        if self.reward is not None and rows:
            prompts = [prompt for prompt, completions in zip(self.prompts, samples) for _ in completions]
            values = torch.as_tensor(self.reward(prompts, [row["completion"] for row in rows]), dtype=torch.float64).reshape(-1)
            for row, value in zip(rows, values.tolist()):
                row["reward"] = value
        return rows

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            rows = self.sample(state.global_step)
            self.rows.extend(rows)
            if state.is_world_process_zero:
                self.publish(rows, state.global_step)
        return control

    def publish(self, new_rows: list[dict[str, Any]], step: int) -> list[str]:
        """Send the table to the trackers; returns where it went (tracker names and/or the JSONL path)."""
        destinations = []
        data = [[row.get(column) for column in self.columns] for row in self.rows]
        for tracker in self.report_to or []:
            if tracker == "wandb":
                import wandb  # optional: imported only when a run reports to it

                if wandb.run is not None:
                    wandb.run.log({self.table_name: wandb.Table(columns=self.columns, data=data)})
                    destinations.append("wandb")
            elif tracker == "trackio":
                import trackio  # optional: imported only when a run reports to it

                trackio.log({self.table_name: trackio.Table(columns=self.columns, data=data)})
                destinations.append("trackio")
            elif tracker == "tensorboard":
                writer = _tensorboard_writer(self.trainer)
                if writer is not None:
                    writer.add_text(self.table_name, _markdown_table(self.columns, data), step)
                    destinations.append("tensorboard")
        if self.jsonl_path is not None or not destinations:
            path = self.jsonl_path or os.path.join(self.trainer.args.output_dir, f"{self.table_name}.jsonl")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "a", encoding="utf-8") as file:
                for row in new_rows:
                    file.write(json.dumps(row, ensure_ascii=False) + "\n")
            destinations.append(path)
        return destinations

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state["rows"]]


def _tensorboard_writer(trainer):
    for callback in trainer.callback_handler.callbacks:
        writer = getattr(callback, "tb_writer", None)
        if writer is not None:
            return writer
    return None


def _markdown_table(columns: list[str], data: list[list[Any]]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in data]
    return "\n".join(lines)
