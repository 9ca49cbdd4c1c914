"""The metrics of every step, under TRL's names, gathered across processes.

`StepMetrics` records, for each training or evaluation batch, TRL's metric names (``rewards/chosen``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logits/chosen``, ``entropy``,
``mean_token_accuracy``, ``num_tokens``; for K-wise data the best response is "chosen", the worst "rejected", plus
``rewards/ranking_accuracy``), each loss component (``loss/<name>``) and the hyper-parameters each loss trained
with this step (``hyperparameters/<loss>/<name>``, e.g. BVPO's auto alpha). The trainer's ``log`` averages what
was recorded since the last log. A method adds its own with `StepMetrics.add` (f-DPG's ``fdpg/*``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch

from prefopt.data.evaluation import preference_accuracy


class StepMetrics:
    """Per-mode lists of values (``store["train"]["rewards/chosen"]``), averaged at each log.

    Args:
        store: ``{"train": defaultdict(list), "eval": defaultdict(list)}`` (TRL's ``_metrics``, shared so code that
            reads TRL's attribute sees the same values).
        gather: the accelerator's ``gather_for_metrics``.
        beta: the implicit reward's scale (rewards = beta * (log pi - log pi_ref)).
        kwise: whether the data is K-wise (ranking accuracy too).
        tensor_parallel_size: tensor-parallel ranks see the same batch; their tokens are counted once.
    """

    def __init__(self, store: dict | None = None, gather: Callable = lambda values: values, *, beta: float = 0.1,
                 kwise: bool = False, tensor_parallel_size: int = 1):
        self.store = store if store is not None else {"train": defaultdict(list), "eval": defaultdict(list)}
        self.gather, self.beta, self.kwise, self.tensor_parallel_size = gather, beta, kwise, tensor_parallel_size
        self.total_train_tokens = 0

    def add(self, mode: str, key: str, value: float) -> None:
        self.store[mode][key].append(value)

    def averages(self, mode: str) -> dict[str, float]:
        """The mean of each metric recorded since the last `clear`."""
        return {key: sum(values) / len(values) for key, values in self.store[mode].items() if values}

    def clear(self, mode: str) -> None:
        self.store[mode].clear()

    def record(self, mode: str, inputs, outputs, batch, response_index: torch.Tensor,
               per_component: dict[str, torch.Tensor], hyperparameters: dict[str, dict[str, Any]]) -> None:
        """One batch's metrics: TRL's names from the policy forward's ``outputs`` and the `LogProbs` ``batch``, each
        loss component's mean, and the numeric hyper-parameters this step trained with."""
        metrics, gather = self.store[mode], self.gather
        shift_mask = inputs["completion_mask"][..., 1:]
        seq_len = shift_mask.size(1)
        real = response_index >= 0
        worst = (real.sum(dim=1) - 1).unsqueeze(1)
        best_rows, worst_rows = response_index[:, 0], response_index.gather(1, worst).squeeze(1)

        entropy_sum = gather((outputs.entropy[:, -seq_len:].detach() * shift_mask).sum()).sum()
        total_tokens = gather(shift_mask.sum()).sum()
        metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            self.total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self.tensor_parallel_size
        metrics["num_tokens"] = [self.total_train_tokens]
        mean_logits = outputs.mean_logits[:, -seq_len:].detach()
        for label, rows in (("chosen", best_rows), ("rejected", worst_rows)):
            mask = shift_mask[rows].bool()
            total = gather(mean_logits[rows][mask].sum()).sum().item()
            count = gather(mask.sum()).sum().item()
            metrics[f"logits/{label}"].append(total / count if count > 0 else 0.0)
        chosen_mask = shift_mask[best_rows].bool()
        correct = gather((outputs.is_top1[:, -seq_len:][best_rows] & chosen_mask).sum()).sum()
        count = gather(chosen_mask.sum()).sum()
        metrics["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)

        policy = batch.policy.detach()
        log_ratios = policy - batch.reference.detach() if batch.reference is not None else policy
        rewards = self.beta * log_ratios
        chosen_rewards, rejected_rewards = rewards[:, 0], rewards.gather(1, worst).squeeze(1)
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(preference_accuracy(gather(chosen_rewards), gather(rejected_rewards))["accuracy"])
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(policy[:, 0]).mean().item())
        metrics["logps/rejected"].append(gather(policy.gather(1, worst).squeeze(1)).mean().item())
        if self.kwise:
            # share of adjacent ranked responses whose implicit rewards are in the labelled order
            adjacent = real[:, 1:] & real[:, :-1]
            ordered = ((rewards[:, :-1] > rewards[:, 1:]) & adjacent).sum(dim=1).float()
            metrics["rewards/ranking_accuracy"].append(gather(ordered / adjacent.sum(dim=1).clamp(min=1)).mean().item())
        for name, values in per_component.items():
            metrics[f"loss/{name}"].append(gather(values.detach()).mean().item())
        self.record_hyperparameters(mode, hyperparameters)

    def record_hyperparameters(self, mode: str, hyperparameters: dict[str, dict[str, Any]]) -> None:
        """What each loss trained with this step (numbers only), as ``hyperparameters/<loss>/<name>``."""
        for name, values in hyperparameters.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.store[mode][f"hyperparameters/{name}/{key}"].append(float(value))

    def record_aux_loss(self, mode: str, aux_loss: torch.Tensor) -> None:
        self.store[mode]["aux_loss"].append(self.gather(aux_loss).mean().item())


class UnfinishedDataloaders:
    """Forget the dataloaders a run left registered with accelerate (context manager around ``train()``).

    accelerate marks the dataloader being iterated as active and unregisters it when its iteration ends; a run
    that stops at ``max_steps`` (or on a non-finite value) leaves the iteration unfinished, so its loader stays
    active, often flagged "at its last batch" with a remainder. ``gather_for_metrics`` then cuts every later
    metric computed outside a loop (``trainer.compute_loss`` in a notebook, another trainer in the same
    process) to that remainder: one row of a batch of four. The loaders registered during the block are removed
    at its end."""

    def __init__(self, gradient_state):
        self.gradient_state = gradient_state

    def __enter__(self):
        self.before = list(self.gradient_state.dataloader_references)
        return self

    def __exit__(self, *exc_info):
        for loader in [ref for ref in self.gradient_state.dataloader_references if ref not in self.before]:
            self.gradient_state._remove_dataloader(loader)  # accelerate's own bookkeeping, as an ended iteration does
        return False
