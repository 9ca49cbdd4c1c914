"""f-DPG: on-policy training of a policy towards a target distribution (`FDPGTrainer`, ``prefopt fdpg``).

Go et al. 2023, "Aligning Language Models with Preferences through f-divergence Minimization"
(arXiv:2302.08215; reference code naver/disco). The policy pi_theta is moved towards p(y|x) = P(y|x) / Z(x):

* ``target="rlhf"``: P(y) = pi_ref(y) exp(r(x, y) / beta) for any `prefopt.online.rewards` reward;
* ``target="constraint"``: P(y) = a(y) b(y) with a = pi_ref and b a binary constraint ``b(prompt, response)``
  (GDC, Khalifa et al. 2021): p is pi_ref restricted to the responses that satisfy b.

Every training step (a loop around nothing: the step itself samples, like disco's tuner):

1. the batch's prompts get ``samples_per_prompt`` samples from the proposal q (the policy itself, or a
   separate ``proposal`` model that is replaced by the policy when the policy is closer to the target,
   disco's ``proposal_update_metric`` behaviour) with `prefopt.online.generate`;
2. each sample is scored with `prefopt.logprobs` (the trainer's one routine) under the policy (with
   gradient), the reference, and q; P comes from the reference and the reward / constraint;
3. the running importance-sampling estimate of Z(x) = mean_q[P(y)/q(y)] of each prompt is updated with the
   new samples (as disco, before they are used), and the registry's ``fdpg`` loss (divergence ``kl``,
   ``rkl``, ``tv`` or ``js``) is called with the per-prompt log Z and the moving-average baseline of the
   pseudo-reward R (the mean of the last ``baseline_window`` values before this batch, as disco);
4. metrics: ``fdpg/divergence`` (IS estimate of D_f(pi || p)), ``fdpg/kl_to_reference`` (KL(pi || pi_ref)),
   ``fdpg/reward`` or ``fdpg/constraint_satisfaction`` (of the samples), ``fdpg/distinct_1``/``_2`` and
   ``fdpg/entropy`` (per-token, of the policy on the samples), ``fdpg/log_z``, ``fdpg/baseline``,
   ``fdpg/truncated`` (share of samples that reached ``max_new_tokens``), ``fdpg/proposal_updates``.

The running log Z, the baseline window and the proposal (weights and divergence accumulators) are the
loss state (`FDPGState`, a `prefopt.callbacks.LossStateCallback`): saved in every checkpoint and restored on
resume, and sampling is seeded by (seed, step), so a resumed run continues exactly as the uninterrupted one.

Differences from the paper, stated: the loss is the paper's gradient estimator written as a surrogate whose
gradient it is (its value is not a divergence), importance weights and log density ratios are clipped at
e^30 (truncated importance sampling; LOSSES.md); samples of a prompt whose Z estimate is still 0 (no sample
satisfied the constraint yet) give no gradient, as in disco; samples are decoded to text and re-tokenised
for scoring (the one log-prob routine), and a sample cut at ``max_new_tokens`` is scored as if it ended there.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, Sequence

import torch
from datasets import Dataset
from torch.utils.data import Dataset as TorchDataset

from prefopt.chat import as_conversation, as_response, prompt_key
from prefopt.config import PrefOptConfig
from prefopt.logprobs import encode, pad_sequences
from prefopt.losses import LogProbs
from prefopt.losses.fdpg import pointwise_divergence, pseudo_reward
from prefopt.methods.fdpg.state import FDPGState
from prefopt.online.sampling import SamplingConfig, generate
from prefopt.training.batching import PromptPreparation
from prefopt.training.fields import one_row_per_example
from prefopt.training.rows import PromptRows
from prefopt.training.trainer import Trainer

TARGETS = ("rlhf", "constraint")


# ------------------------------------------------------------------------------------------- metrics


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over whitespace tokens of ``texts`` (Li et al. 2016); 0 with no n-gram."""
    grams = [tuple(words[i : i + n]) for words in (text.split() for text in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# ------------------------------------------------------------------------------------------- trainer


class FDPGTrainer(Trainer):
    """On-policy f-DPG: every step samples from the policy (or a proposal), scores, and trains the ``fdpg`` loss.

        from prefopt.online import FDPGTrainer
        trainer = FDPGTrainer(model, tokenizer, prompts, target="constraint",
                              constraint=lambda prompt, response: "good" in response,
                              args=PrefOptConfig("out", loss="fdpg", loss_kwargs={"divergence": "js"}, max_steps=50))
        trainer.train()

    Args:
        model: the policy (name or object; PEFT / 4-bit as `prefopt.Trainer`); its initial state is the
            reference a = pi_ref (a copy, or the adapter-disabled base with PEFT).
        processing_class: the tokenizer. train_dataset: prompts (a `datasets.Dataset` with a ``prompt``
            column, or a list of prompts: text or message lists).
        target: "rlhf" (needs ``reward`` and ``beta``) or "constraint" (needs ``constraint``).
        reward: a `prefopt.online.rewards` callable ``reward(prompts, responses) -> Tensor[N]``; beta: the RLHF target's
            KL strength (P = pi_ref exp(r / beta)).
        constraint: ``constraint(prompt, response) -> bool`` (b(y) of GDC).
        proposal: a model to sample from instead of the policy (disco's offline mode); it is replaced by the
            policy whenever, over the last ``proposal_update_every`` steps, the policy was closer to the target
            than it by the ``proposal_update_metric`` divergence. None: sample from the policy (on-policy).
        samples_per_prompt: samples drawn per prompt and step (disco's default 4).
        sampling: the other sampling settings (`prefopt.online.SamplingConfig`; keyword options such as
            ``max_new_tokens=32`` override it); its seed offsets the per-step seed (``args.seed`` and the step).
        baseline_window: how many past pseudo-rewards the baseline averages (disco: 1024).
        args: a `PrefOptConfig` whose loss is ``fdpg`` (divergence in ``loss_kwargs``); its batch size counts
            prompts per step. callbacks, peft_config, ref_model: as `prefopt.Trainer`.
    """

    rows_class = PromptRows  # rows are prompts (prefopt.training.rows), not preferences
    preparation_class = PromptPreparation  # nothing to tokenise: the batch is the list of prompts

    def __init__(
        self,
        model,
        processing_class,
        train_dataset,
        *,
        target: str = "rlhf",
        reward: Callable | None = None,
        beta: float = 0.1,
        constraint: Callable[[Any, str], bool] | None = None,
        proposal=None,
        proposal_update_every: int = 16,
        proposal_update_metric: str = "kl",
        samples_per_prompt: int = 4,
        sampling: SamplingConfig | None = None,
        baseline_window: int = 1024,
        args: PrefOptConfig | None = None,
        ref_model=None,
        callbacks=None,
        peft_config=None,
        **sampling_options,
    ):
        if target not in TARGETS:
            raise ValueError(f"f-DPG target must be one of {list(TARGETS)}, got {target!r}")
        if target == "rlhf" and (reward is None or not beta > 0):
            raise ValueError("target='rlhf' (P = pi_ref exp(r / beta)) needs a reward callable and beta > 0")
        if target == "constraint" and constraint is None:
            raise ValueError("target='constraint' (P = pi_ref(y) b(y)) needs constraint(prompt, response) -> bool")
        if proposal_update_metric not in ("kl", "rkl", "tv", "js"):
            raise ValueError(f"proposal_update_metric must be one of kl, rkl, tv, js, got {proposal_update_metric!r}")
        if samples_per_prompt < 1 or proposal_update_every < 1:
            raise ValueError("samples_per_prompt and proposal_update_every must be >= 1")
        args = args or PrefOptConfig("fdpg-out", loss="fdpg")
        if args.loss_components() != (("fdpg", 1.0),):
            raise ValueError(f"FDPGTrainer trains the 'fdpg' loss alone; args.loss is {args.loss!r}")
        if args.ld_alpha is not None:
            raise ValueError(
                f"FDPGTrainer: ld_alpha={args.ld_alpha} has no meaning here: LD-DPO down-weights the tokens of a response "
                "past the shortest response of the same example, and f-DPG scores one sample at a time; unset ld_alpha"
            )
        if not isinstance(train_dataset, (Dataset, TorchDataset)):
            train_dataset = Dataset.from_dict({"prompt": list(train_dataset)})
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        self.target, self.reward, self.target_beta, self.constraint = target, reward, beta, constraint
        self.sampling = SamplingConfig.of(sampling, **sampling_options).replace(n=samples_per_prompt)
        self.samples_per_prompt, self.max_new_tokens = samples_per_prompt, self.sampling.max_new_tokens
        self.proposal_update_every, self.proposal_update_metric = proposal_update_every, proposal_update_metric
        self.proposal = proposal
        self.fdpg_state = FDPGState(baseline_window)
        uses_peft = peft_config is not None or getattr(model, "peft_config", None) is not None
        if ref_model is None and not uses_peft and not isinstance(model, str):
            ref_model = copy.deepcopy(model)  # the reference is the target's base a = pi_ref: keep it
        super().__init__(
            model,
            ref_model=ref_model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=[self.fdpg_state, *(callbacks or [])],
            peft_config=peft_config,
        )
        if self.proposal is not None:
            self.proposal.eval().requires_grad_(False).to(self.accelerator.device)

    # ---- the step

    def _samples(self, prompts: list) -> tuple[list, list, list[str]]:
        """(prompt per sample, response per sample as the policy sees it, response texts), sampled from q."""
        sampler = self.proposal if self.proposal is not None else self.accelerator.unwrap_model(self.model)
        seed = self.args.seed * 1_000_003 + self.sampling.seed + self.state.global_step  # the same samples after a resume
        texts = generate(sampler, self.field_context.tokenizer, prompts, self.sampling.replace(seed=seed), progress=False)
        flat_prompts, flat_responses, flat_texts = [], [], []
        for prompt, responses in zip(prompts, texts):
            conversation = as_conversation(self.field_context.tokenizer, prompt)
            for text in responses:
                flat_prompts.append(conversation)
                flat_responses.append(as_response(conversation, text))
                flat_texts.append(text)
        return flat_prompts, flat_responses, flat_texts

    def _encode(self, prompts, responses) -> dict[str, torch.Tensor]:
        tokenizer = self.field_context.tokenizer
        sequences = []
        for prompt, response in zip(prompts, responses):
            prompt_ids, (completion_ids,) = encode(tokenizer, prompt, [response], eos_token=tokenizer.eos_token)
            sequences.append((prompt_ids, completion_ids))
        batch = pad_sequences(sequences, tokenizer.pad_token_id, max_length=self.args.max_length)
        batch["response_index"] = one_row_per_example(len(sequences))
        return {key: value.to(self.accelerator.device) for key, value in batch.items()}

    def _log_target(self, prompts, texts, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log P(y) [N], the reward or the constraint's 0/1 [N])."""
        if self.target == "rlhf":
            values = torch.as_tensor(self.reward(prompts, texts), dtype=torch.float32).flatten().to(reference.device)
            if values.numel() != len(texts) or not bool(torch.isfinite(values).all()):
                raise ValueError(f"the reward must return {len(texts)} finite values, got {values.tolist()[:8]}")
            return reference + values / self.target_beta, values  # log pi_ref + r / beta
        satisfied = torch.tensor([bool(self.constraint(p, t)) for p, t in zip(prompts, texts)], device=reference.device)
        log_b = torch.where(satisfied, torch.zeros_like(reference), torch.full_like(reference, -math.inf))
        return reference + log_b, satisfied.float()  # log a(y) + log b(y), GDC

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.model.training:
            raise NotImplementedError("FDPGTrainer has no evaluation loop; evaluate samples of the trained policy instead")
        state, spec = self.fdpg_state, self.preference_loss.components[0][0]
        prompts, responses, texts = self._samples(list(inputs["prompt"]))
        batch = self._encode(prompts, responses)
        # every log-prob through the run's one scoring routine (each sample is its own example: response_index)
        policy = self.forward.score(model, batch, outputs=self.forward.metric_outputs)
        reference = self.field_context.reference_logps(batch).float()
        if self.proposal is not None:
            proposal = self.field_context.model_logps(self.proposal, batch).float()
        else:
            proposal = policy.logps.detach().float()  # q = pi_theta at sampling time
        log_target, values = self._log_target(prompts, texts, reference)

        keys = [prompt_key(prompt) for prompt in prompts]
        for key in dict.fromkeys(keys):  # Z(x) first takes in the new samples (disco's order)
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key])
            state.log_partition.update(key, (log_target - proposal)[rows])
        log_z = torch.tensor([state.log_partition.log_z(key) for key in keys], device=reference.device)
        known = torch.isfinite(log_z)  # Z(x) = 0 so far: p is undefined, no gradient from these samples
        log_z = torch.where(known, log_z, torch.zeros_like(log_z))

        fields = LogProbs(policy=policy.logps.unsqueeze(1), proposal=proposal.unsqueeze(1), target=log_target.unsqueeze(1))
        hyperparameters = {**self.step_hyperparameters()[spec.name], "log_z": log_z, "baseline": state.baseline}
        per_sample = spec(fields, **hyperparameters)
        if not bool(torch.isfinite(per_sample[known]).all()):
            raise ValueError(f"f-DPG step {self.state.global_step}: the loss is not finite for some samples "
                             f"(policy log-probs {policy.logps.detach()[known].tolist()[:4]})")
        loss = torch.where(known, per_sample, torch.zeros_like(per_sample)).sum() / per_sample.numel()

        with torch.no_grad():
            normalised = log_target - log_z
            divergence = hyperparameters["divergence"]
            state.add_rewards(pseudo_reward(policy.logps.detach() - normalised, divergence)[known])
            model_terms = pointwise_divergence(policy.logps.detach(), normalised, proposal, self.proposal_update_metric)
            self._track_proposal(normalised[known], proposal[known], model_terms[known])
            weights = torch.exp(torch.clamp(policy.logps.detach() - proposal, max=30))
            self._log_step(texts, values, policy, batch, weights, reference, proposal, normalised, known, log_z, divergence)
        return loss

    def _track_proposal(self, normalised, proposal, model_terms) -> None:
        """Accumulate D(q || p) and D(pi || p) estimates; every ``proposal_update_every`` steps replace q by pi
        when pi is closer (disco's proposal_update_metric rule). Nothing to do when sampling from the policy."""
        if self.proposal is None:
            return
        state = self.fdpg_state
        proposal_terms = pointwise_divergence(proposal, normalised, proposal, self.proposal_update_metric)
        state.proposal_divergence = [state.proposal_divergence[0] + proposal_terms.sum().item(),
                                     state.proposal_divergence[1] + proposal_terms.numel()]
        state.policy_divergence = [state.policy_divergence[0] + model_terms.sum().item(),
                                   state.policy_divergence[1] + model_terms.numel()]
        if (self.state.global_step + 1) % self.proposal_update_every:
            return
        proposal_mean = state.proposal_divergence[0] / max(state.proposal_divergence[1], 1)
        policy_mean = state.policy_divergence[0] / max(state.policy_divergence[1], 1)
        if state.policy_divergence[1] and policy_mean < proposal_mean:
            self.proposal.load_state_dict(self.accelerator.unwrap_model(self.model).state_dict())
            state.proposal_updates += 1
        state.proposal_divergence, state.policy_divergence = [0.0, 0], [0.0, 0]

    def _log_step(self, texts, values, policy, batch, weights, reference, proposal, normalised, known, log_z, divergence):
        add = functools.partial(self.metrics.add, "train")
        mean = lambda tensor: tensor.float().mean().item() if tensor.numel() else 0.0  # noqa: E731
        terms = pointwise_divergence(policy.logps.detach(), normalised, proposal, divergence)
        add("fdpg/divergence", mean(terms[known]))
        add("fdpg/kl_to_reference", mean(weights * (policy.logps.detach() - reference)))
        add("fdpg/reward" if self.target == "rlhf" else "fdpg/constraint_satisfaction", mean(values))
        add("fdpg/distinct_1", distinct_n(texts, 1))
        add("fdpg/distinct_2", distinct_n(texts, 2))
        mask = batch["completion_mask"][:, 1:]
        entropy = (policy.outputs.entropy[:, -mask.size(1) :].detach() * mask).sum() / mask.sum().clamp(min=1)
        add("fdpg/entropy", entropy.item())
        add("fdpg/log_z", mean(log_z[known]))
        add("fdpg/baseline", self.fdpg_state.baseline)
        add("fdpg/importance_weight", mean(weights))
        add("fdpg/truncated", mean((policy.lengths - 1 >= self.max_new_tokens).float()))
        add("fdpg/samples_without_z", float((~known).sum().item()))
        add("fdpg/proposal_updates", float(self.fdpg_state.proposal_updates))
