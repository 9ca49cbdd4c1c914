"""Rewards and preference oracles for online preference data.

One interface: a reward is a callable ``reward(prompts, responses) -> torch.Tensor [N]`` (one value per
(prompt, response) pair); an oracle is a callable ``oracle(prompts, first, second) -> torch.Tensor [N]``
giving P(first > second | prompt). Prompts are text or message lists, responses text.

    from prefopt.online.rewards import DensityRatioReward, FunctionReward, BradleyTerryOracle
    reward = DensityRatioReward(peft_model, None, tokenizer, system_prompt="Answer correctly.")  # adapter vs base
    oracle = BradleyTerryOracle(reward, temperature=1.0)

* `DensityRatioReward`: CDR's reward (Xu et al. 2024, "CDR: Customizable Density Ratios of strong-over-weak
  LLMs"): sum of response-token log-probs under ``strong`` minus under ``weak``, both scored on the same
  (optionally customised) prompt, no length normalisation. ``weak=None`` with a PEFT ``strong`` scores the
  weak side with the adapter disabled: the paper's strong model is the DPO-tuned version of its weak
  model, which is exactly an adapter over its base.
* `FunctionReward`: any Python callable (the bundled tasks' ground truth: ``FunctionReward(task.reward)``).
* `RewardModel`: a sequence-classification reward model (first logit).
* `BradleyTerryOracle`: P = sigmoid((r(first) - r(second)) / temperature) from any reward.
* `JudgeOracle`: any pairwise judge callable ``fn(prompt, first, second) -> P(first > second)`` (a bool is 1/0).

All log-probs come from `prefopt.logprobs.score`, the routine the trainer uses.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from accelerate.utils import is_peft_model

from prefopt.chat import as_response, is_conversational, response_text
from prefopt.logprobs import score
from prefopt.training.reference import Reference


def _check_lengths(name: str, *columns: Sequence) -> None:
    lengths = {len(column) for column in columns}
    if len(lengths) != 1:
        raise ValueError(f"{name}: got columns of different lengths {[len(c) for c in columns]}")


class FunctionReward:
    """A reward from any callable: ``fn(prompt, response) -> float`` per pair (``batched=False``) or
    ``fn(prompts, responses) -> sequence of floats`` (``batched=True``). Non-finite values raise."""

    def __init__(self, fn: Callable, *, batched: bool = False):
        self.fn, self.batched = fn, batched

    def __call__(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        _check_lengths("FunctionReward", prompts, responses)
        if self.batched:
            values = self.fn(list(prompts), list(responses))
        else:
            values = [self.fn(prompt, response) for prompt, response in zip(prompts, responses)]
        values = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        if values.shape != (len(prompts),):
            raise ValueError(f"FunctionReward: {getattr(self.fn, '__name__', self.fn)} returned {values.numel()} values for {len(prompts)} pairs")
        bad = torch.nonzero(~torch.isfinite(values))
        if bad.numel():
            row = int(bad[0, 0])
            raise ValueError(f"FunctionReward: non-finite reward {values[row].item()} for pair {row}")
        return values


class DensityRatioReward:
    """CDR's reward: sum log pi_strong(y | x~) - sum log pi_weak(y | x~) over the response tokens.

    Args:
        strong, weak: causal LMs sharing ``tokenizer``. ``weak=None``: ``strong`` must be a PEFT model and
            the weak side is the same model with its adapter disabled.
        system_prompt, criteria, exemplars: the customised prompt x~, the same for both models. The
            system prompt and the criteria (a string, or a list rendered one per line) form one system
            message; exemplars, a list of (prompt, response) pairs, become earlier user/assistant turns.
            Without a chat template the same parts are joined as plain text before the prompt.
        batch_size: sequences per forward.
    """

    def __init__(
        self,
        strong,
        weak,
        tokenizer,
        *,
        system_prompt: str | None = None,
        criteria: str | Sequence[str] | None = None,
        exemplars: Sequence[tuple[str, str]] | None = None,
        batch_size: int = 8,
    ):
        if weak is None and not is_peft_model(strong):
            raise ValueError(
                "DensityRatioReward: weak=None means 'strong with its adapter disabled', but strong is not a "
                "PEFT model; pass a weak model, or a PeftModel as strong"
            )
        self.strong, self.weak, self.tokenizer = strong, weak, tokenizer
        # the weak side is resolved as every reference is: a model of its own, or the strong model's base
        self.weak_side = Reference.separate(weak) if weak is not None else Reference.base_of(strong)
        self.system_prompt, self.criteria, self.exemplars = system_prompt, criteria, list(exemplars or [])
        self.batch_size = batch_size

    def _system_text(self) -> str | None:
        parts = [self.system_prompt] if self.system_prompt else []
        if self.criteria:
            criteria = [self.criteria] if isinstance(self.criteria, str) else list(self.criteria)
            parts.append("Criteria:\n" + "\n".join(f"- {item}" for item in criteria))
        return "\n\n".join(parts) or None

    def customised_prompt(self, prompt: Any) -> Any:
        """The prompt x~ both models score the response after."""
        system = self._system_text()
        if is_conversational(prompt) or (isinstance(prompt, str) and getattr(self.tokenizer, "chat_template", None)):
            messages = list(prompt) if is_conversational(prompt) else [{"role": "user", "content": prompt}]
            if not system and not self.exemplars:
                return messages
            turns = []
            for example_prompt, example_response in self.exemplars:
                turns += [{"role": "user", "content": example_prompt}, {"role": "assistant", "content": example_response}]
            if messages and messages[0]["role"] == "system":  # the prompt's own system message comes first
                head, messages = [messages[0]], messages[1:]
                if system:
                    head = [{"role": "system", "content": head[0]["content"] + "\n\n" + system}]
            else:
                head = [{"role": "system", "content": system}] if system else []
            return head + turns + messages
        parts = [system] if system else []
        parts += [f"{example_prompt}\n{example_response}" for example_prompt, example_response in self.exemplars]
        return "\n\n".join([*parts, prompt]) if parts else prompt

    def _score(self, model, prompts, responses) -> torch.Tensor:
        return score(model, self.tokenizer, prompts, responses, batch_size=self.batch_size).logps

    def __call__(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        _check_lengths("DensityRatioReward", prompts, responses)
        customised = [self.customised_prompt(prompt) for prompt in prompts]
        responses = [as_response(prompt, response_text(response)) for prompt, response in zip(customised, responses)]
        strong = self._score(self.strong, customised, responses)
        with self.weak_side.active() as weak_model:
            weak = self._score(weak_model, customised, responses)
        return strong - weak


class RewardModel:
    """A sequence-classification reward model: the first logit of prompt + response.

    ``model_or_path`` is a model object or a folder / Hub id loaded with
    ``AutoModelForSequenceClassification``. With a chat template the pair is rendered as a conversation."""

    def __init__(self, model_or_path, tokenizer=None, *, batch_size: int = 8, max_length: int | None = None):
        if isinstance(model_or_path, str):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_path)
            model_or_path = AutoModelForSequenceClassification.from_pretrained(model_or_path)
        if tokenizer is None:
            raise ValueError("RewardModel needs the tokenizer of a model object")
        self.model, self.tokenizer, self.batch_size, self.max_length = model_or_path, tokenizer, batch_size, max_length

    def _text(self, prompt, response) -> str:
        response = response_text(response)
        if getattr(self.tokenizer, "chat_template", None):
            messages = list(prompt) if is_conversational(prompt) else [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        return (prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)) + response

    @torch.no_grad()
    def __call__(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        _check_lengths("RewardModel", prompts, responses)
        texts = [self._text(prompt, response) for prompt, response in zip(prompts, responses)]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        values = []
        pad_side, self.tokenizer.padding_side = self.tokenizer.padding_side, "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        try:
            for start in range(0, len(texts), self.batch_size):
                encoded = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    add_special_tokens=False,
                ).to(device)
                values.append(self.model(**encoded).logits[:, 0].float().cpu())
        finally:
            self.tokenizer.padding_side = pad_side
            self.model.train(was_training)
        return torch.cat(values) if values else torch.zeros(0)


class BradleyTerryOracle:
    """P(first > second | x) = sigmoid((r(x, first) - r(x, second)) / temperature) for any reward."""

    def __init__(self, reward: Callable[[Sequence, Sequence], torch.Tensor], temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"BradleyTerryOracle: temperature must be > 0, got {temperature}")
        self.reward, self.temperature = reward, temperature

    def __call__(self, prompts: Sequence, first: Sequence, second: Sequence) -> torch.Tensor:
        _check_lengths("BradleyTerryOracle", prompts, first, second)
        rewards = self.reward(list(prompts) * 2, list(first) + list(second))
        count = len(prompts)
        return torch.sigmoid((rewards[:count] - rewards[count:]) / self.temperature)


class JudgeOracle:
    """A pairwise judge: ``fn(prompt, first, second) -> P(first > second)`` (float in [0, 1], or a bool)."""

    def __init__(self, fn: Callable[[Any, Any, Any], float | bool]):
        self.fn = fn

    def __call__(self, prompts: Sequence, first: Sequence, second: Sequence) -> torch.Tensor:
        _check_lengths("JudgeOracle", prompts, first, second)
        values = torch.tensor([float(self.fn(p, a, b)) for p, a, b in zip(prompts, first, second)], dtype=torch.float32)
        bad = torch.nonzero(~((values >= 0) & (values <= 1)))
        if bad.numel():
            row = int(bad[0, 0])
            raise ValueError(f"JudgeOracle: judge returned {values[row].item()} for pair {row}; expected a probability in [0, 1]")
        return values
