"""prefopt.online round loop: oracle rankings, the fields each round precomputes, training rounds, resume.

Tiny in-memory Llama and word-level tokenizer (helpers_trainer); the programmatic reward is the share of
"good" words in a response, so training on the oracle's best-vs-worst pairs must raise it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import TrainerCallback

from helpers_trainer import config_kwargs, make_model, make_tokenizer
from prefopt import PrefOptConfig
from prefopt.logprobs import score
from prefopt.online import OnlineConfig, train_online
from prefopt.online.rounds import (
    STATE_FILE,
    knockout_best_worst,
    mean_with_interval,
    rank_samples,
    round_trainer,
    scored_best_worst,
    win_rate,
)

# ------------------------------------------------------------------------------------------ rankings


class TableOracle:
    """P(first > second) from a hand-written table of outcomes between sample ids; counts its calls."""

    def __init__(self, beats: dict[tuple[str, str], float]):
        self.beats, self.calls = dict(beats), 0
        for (a, b), p in beats.items():
            self.beats.setdefault((b, a), 1 - p)

    def __call__(self, prompts, first, second):
        self.calls += 1
        return torch.tensor([self.beats.get((a, b), 0.5) for a, b in zip(first, second)])


def strength_oracle(strengths: dict[str, float]) -> TableOracle:
    return TableOracle({(a, b): float(strengths[a] > strengths[b]) + 0.5 * (strengths[a] == strengths[b])
                        for a in strengths for b in strengths if a != b})


def test_knockout_on_a_transitive_oracle():
    """K = 8, strengths s = [3, 7, 1, 5, 0, 6, 2, 4] (sample i is named "y<i>").
    Winners: (y0 y1) -> y1, (y2 y3) -> y3, (y4 y5) -> y5, (y6 y7) -> y7; (y1 y3) -> y1, (y5 y7) -> y5; y1 (s=7).
    Losers bracket (loser advances): first-round losers y0 y2 y4 y6; (y0 y2) -> y2, (y4 y6) -> y4; (y2 y4) -> y4 (s=0)."""
    samples = [f"y{i}" for i in range(8)]
    oracle = strength_oracle(dict(zip(samples, [3, 7, 1, 5, 0, 6, 2, 4])))
    assert knockout_best_worst(oracle, ["x"], [samples]) == [(1, 4)]


def test_knockout_and_round_robin_differ_on_a_cyclic_oracle():
    """Outcomes: y0 > y1, y2 > y3, y2 > y0, y3 > y0, y1 > y2, y3 > y1.
    Knockout: (y0 y1) -> y0, (y2 y3) -> y2, final (y0 y2) -> y2 = best; losers (y1 y3): y1 loses -> worst y1.
    Round robin mean win rates: y0 1/3, y1 1/3, y2 2/3, y3 2/3 -> best y2 (first of the tie), worst y0."""
    oracle = TableOracle({("y0", "y1"): 1, ("y2", "y3"): 1, ("y2", "y0"): 1, ("y3", "y0"): 1, ("y1", "y2"): 1, ("y3", "y1"): 1})
    samples = [["y0", "y1", "y2", "y3"]]
    assert knockout_best_worst(oracle, ["x"], samples) == [(2, 1)]
    assert scored_best_worst(oracle, ["x"], samples) == [(2, 0)]


def test_knockout_odd_count_gives_a_bye():
    """K = 3, s = [1, 0, 2]: (y0 y1) -> y0, y2 has a bye; final (y0 y2) -> y2. Losers: y1 and the bye y2; (y1 y2)
    -> y1 loses -> worst y1. With s = [2, 1, 0] the bye entrant y2 is the weakest: losers y1, y2 -> worst y2."""
    samples = ["y0", "y1", "y2"]
    assert knockout_best_worst(strength_oracle(dict(zip(samples, [1, 0, 2]))), ["x"], [samples]) == [(2, 1)]
    assert knockout_best_worst(strength_oracle(dict(zip(samples, [2, 1, 0]))), ["x"], [samples]) == [(0, 2)]


def test_best_worst_by_reward_and_ties_are_never_pairs():
    """best_worst with a reward: argmax / argmin of the reward (first index on ties). Prompt 0 is ranked;
    prompt 1's samples all score the same (oracle P = 0.5): no pair; prompt 2's samples are identical texts."""
    rewards = {"a": 0.2, "b": 0.9, "c": 0.1, "d": 0.5, "e": 0.5, "same": 0.3}

    def reward(prompts, responses):
        return torch.tensor([rewards[r] for r in responses])

    def oracle(prompts, first, second):
        return torch.sigmoid(reward(prompts, first) - reward(prompts, second))

    samples = [["a", "b", "c"], ["d", "e", "d"], ["same", "same", "same"]]
    assert scored_best_worst(oracle, ["x"] * 3, samples, reward) == [(1, 2), (0, 0), (0, 0)]
    pairs, ties = rank_samples(oracle, ["x"] * 3, samples, "best_worst", reward)
    assert pairs == [(0, 1, 2)] and ties == [1, 2]
    pairs, ties = rank_samples(oracle, ["x"] * 3, samples, "knockout")
    assert pairs == [(0, 1, 2)] and ties == [1, 2]


def test_knockout_calls_the_oracle_once_per_bracket_level_for_all_prompts():
    """K = 8: 3 winner levels + 2 more loser levels, then one check of best vs worst, whatever the prompt count."""
    for prompts in (1, 5):
        samples = [[f"y{i}" for i in range(8)] for _ in range(prompts)]
        oracle = strength_oracle({f"y{i}": i for i in range(8)})
        rank_samples(oracle, ["x"] * prompts, samples, "knockout")
        assert oracle.calls == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=2, max_size=12, unique=True), st.sampled_from(["knockout", "best_worst"]))
def test_transitive_oracle_ranks_the_strongest_best_and_the_weakest_worst(strengths, method):
    """Under a transitive oracle the best is the argmax and the worst the argmin, for any K and either method
    (the weakest sample loses, or skips with a bye, its first match and then loses every loser-bracket match)."""
    samples = [f"y{i}" for i in range(len(strengths))]
    oracle = strength_oracle(dict(zip(samples, strengths)))
    pairs, ties = rank_samples(oracle, ["x"], [samples], method)
    assert pairs == [(0, strengths.index(max(strengths)), strengths.index(min(strengths)))] and ties == []


def test_win_rate_and_interval_by_hand():
    """P values 1, 0, 1, 1 (sample j of new vs sample j of old): mean 0.75; sd = 0.5, 95% half-width 1.96*0.5/2 = 0.49."""
    oracle = strength_oracle({"good": 1, "bad": 0})
    mean, low, high = win_rate(oracle, ["x", "z"], [["good", "bad"], ["good", "good"]], [["bad", "good"], ["bad", "bad"]])
    assert (mean, low, high) == pytest.approx((0.75, 0.26, 1.24))
    assert mean_with_interval([0.3]) == (0.3, 0.3, 0.3)


# ------------------------------------------------------------------------------------------ fields

PROMPTS = [[{"role": "user", "content": word}] for word in ("say", "tell", "please say", "say please")]


def _answer(text):
    return [{"role": "assistant", "content": text}]


def _rows(with_calibration=False):
    rows = [{"prompt": prompt, "chosen": _answer("good good"), "rejected": _answer("bad ok")} for prompt in PROMPTS]
    if with_calibration:
        for row, text in zip(rows, ("yes", "no no", "meh", "nice yes")):
            row["calibration"] = _answer(text)
    return Dataset.from_list(rows)


def _perturbed(model, seed=1, scale=0.3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model


def _scores(model, rows, column):
    return score(model, make_tokenizer(), list(rows["prompt"]), list(rows[column])).logps


def test_inpo_fields_are_pi_t_and_pi_ref_forward_passes(tmp_path):
    """previous = log pi_t (the policy the round starts from), reference = log pi_ref, for every response,
    precomputed before the first step; pi_t is a perturbed copy of pi_ref, so the two differ."""
    reference = make_model()
    policy = _perturbed(copy.deepcopy(reference))
    rows = _rows()
    args = PrefOptConfig(loss="inpo", **config_kwargs(tmp_path))
    trainer = round_trainer(policy, make_tokenizer(), rows, args, reference_model=reference)
    precomputed_previous = torch.tensor(trainer.train_dataset["round_previous"])
    precomputed_reference = torch.tensor(trainer.train_dataset["round_reference"])
    for k, column in enumerate(("chosen", "rejected")):
        torch.testing.assert_close(precomputed_previous[:, k], _scores(policy, rows, column))
        torch.testing.assert_close(precomputed_reference[:, k], _scores(reference, rows, column))
    assert (precomputed_previous - precomputed_reference).abs().min() > 1e-3
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    fields = {}
    for provider in trainer._batch_providers():
        fields.update(provider.provide(trainer, batch, batch["response_index"]))
    torch.testing.assert_close(fields["previous"], precomputed_previous)
    torch.testing.assert_close(fields["reference"], precomputed_reference)


def test_peft_round_reference_is_the_base_and_previous_the_adapter(tmp_path):
    """A LoRA policy whose adapter is non-zero (pi_t != pi_ref): reference = adapter-disabled base, previous =
    the adapted model; TRL's copy of the adapter as a 'ref' adapter is removed."""
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(make_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = _rows()
    base_scores = {}
    with policy.disable_adapter():
        for column in ("chosen", "rejected"):
            base_scores[column] = _scores(policy, rows, column)
    trainer = round_trainer(policy, make_tokenizer(), rows, PrefOptConfig(loss="inpo", **config_kwargs(tmp_path)))
    assert "ref" not in policy.peft_config
    for k, column in enumerate(("chosen", "rejected")):
        torch.testing.assert_close(torch.tensor(trainer.train_dataset["round_previous"])[:, k], _scores(policy, rows, column))
        torch.testing.assert_close(torch.tensor(trainer.train_dataset["round_reference"])[:, k], base_scores[column])


def test_online_vpo_calibration_fields(tmp_path):
    """calibration_policy = log pi_theta(y_cal) at the step (with gradient), calibration_reference = log pi_ref(y_cal)."""
    reference = make_model()
    policy = _perturbed(copy.deepcopy(reference))
    rows = _rows(with_calibration=True)
    args = PrefOptConfig(loss="vpo", loss_kwargs={"mode": "online"}, **config_kwargs(tmp_path))
    trainer = round_trainer(policy, make_tokenizer(), rows, args, reference_model=reference, calibration=True)
    torch.testing.assert_close(torch.tensor(trainer.train_dataset["round_calibration_reference"]).squeeze(1),
                               _scores(reference, rows, "calibration"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    fields = {}
    for provider in trainer._batch_providers():
        fields.update(provider.provide(trainer, batch, batch["response_index"]))
    assert fields["calibration_policy"].requires_grad
    torch.testing.assert_close(fields["calibration_policy"].detach(), _scores(policy, rows, "calibration"), atol=1e-4, rtol=1e-4)
    trainer.train()  # the online-mode loss trains on these fields
