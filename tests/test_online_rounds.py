"""prefopt.online round loop: oracle rankings, the fields each round precomputes, training rounds, resume.

Tiny in-memory Llama and word-level tokenizer (helpers_trainer); the programmatic reward is the share of
"good" words in a response, so training on the oracle's best-vs-worst pairs must raise it.
"""

from __future__ import annotations

import copy
import math
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
from prefopt.data.evaluation import wilson_interval
from prefopt.online.evaluation import compare_samples
from prefopt.online.ranking import knockout_best_worst, rank_samples, scored_best_worst
from prefopt.online.rounds import round_trainer
from prefopt.online.run_folder import STATE_FILE

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
    """P values 1, 0, 1, 1 (sample j of new vs sample j of old): mean 0.75, Wilson's 95% interval of 3 wins in 4
    (centre (0.75 + z^2/8) / (1 + z^2/4) = 0.6275, half-width 0.3269: [0.3006, 0.9544]), inside [0, 1] unlike the
    normal interval 0.75 +- 1.96 * 0.5 / 2 = [0.26, 1.24] the loop reported before."""
    oracle = strength_oracle({"good": 1, "bad": 0})
    result = compare_samples(oracle, ["x", "z"], [["good", "bad"], ["good", "good"]], [["bad", "good"], ["bad", "bad"]])
    assert (result.mean, result.low, result.high, result.count) == pytest.approx((0.75, 0.3006, 0.9544, 4), abs=1e-4)
    assert (result.low, result.high) == wilson_interval(3, 4)


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
    fields, _ = trainer.batch_fields(trainer.model, batch)
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
    fields, _ = trainer.batch_fields(trainer.model, batch)
    assert fields["calibration_policy"].requires_grad
    torch.testing.assert_close(fields["calibration_policy"].detach(), _scores(policy, rows, "calibration"), atol=1e-4, rtol=1e-4)
    trainer.train()  # the online-mode loss trains on these fields


# ------------------------------------------------------------------------------------ training rounds

WORDS_PROMPTS = ["say", "tell", "please say", "say please", "tell please", "please", "say say", "tell say"]


def good_share(prompt, response) -> float:
    """The true reward: the share of "good" among the response's words."""
    words = response.split()
    return words.count("good") / max(1, len(words))


def _run(tmp_path, loss, *, rounds=2, folder="run", callbacks=None, save_steps=None, ranking="knockout", **loss_kwargs):
    from prefopt.rewards import FunctionReward

    extra = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {}
    args = PrefOptConfig(
        loss=loss, loss_kwargs=loss_kwargs or None,
        **config_kwargs(tmp_path / folder, output_dir=str(tmp_path / folder / "online"), max_steps=-1, num_train_epochs=3,
                        learning_rate=5e-3, **extra),
    )
    config = OnlineConfig(max_new_tokens=6, eval_samples_per_prompt=8, ranking=ranking)
    return train_online(make_model(), make_tokenizer(), WORDS_PROMPTS, loss=loss, reward=FunctionReward(good_share),
                        args=args, rounds=rounds, samples_per_prompt=6, config=config, callbacks=callbacks)


@pytest.fixture(scope="module")
def inpo_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("inpo"), "inpo")


def _assert_each_round_raises_the_reward(history, margin=0.03):
    """history[0]["reward/samples"] is the mean true reward of round 1's samples, i.e. of pi_0 (48 samples);
    "reward/mean" is that of pi_{t+1}'s evaluation samples (64)."""
    initial = history[0]["reward/samples"]
    for entry in history:
        assert entry["reward/mean"] > initial + margin, (initial, [h["reward/mean"] for h in history])
        assert entry["win_rate/reference"] > 0.5


@pytest.mark.slow
def test_two_inpo_rounds_raise_the_reward(inpo_run):
    history = inpo_run.history
    assert [entry["round"] for entry in history] == [1, 2]
    _assert_each_round_raises_the_reward(history)
    for entry in history:
        assert entry["win_rate/previous_low"] <= entry["win_rate/previous"] <= entry["win_rate/previous_high"]
        assert entry["pairs"] + entry["skipped_ties"] == len(WORDS_PROMPTS)
        assert entry["kl/reference"] == entry["kl/reference"]  # finite, reported


@pytest.mark.slow
def test_two_online_vpo_rounds_raise_the_reward(tmp_path):
    result = _run(tmp_path, "vpo")
    _assert_each_round_raises_the_reward(result.history)
    data = json.loads((tmp_path / "run" / "online" / "round-1" / "round_data.json").read_text())
    assert all("calibration" in row for row in data["rows"])  # y_cal ~ pi_ref drawn for every trained prompt


@pytest.mark.slow
def test_two_iterative_dpo_rounds_raise_the_reward(tmp_path):
    result = _run(tmp_path, "dpo", ranking="best_worst")
    _assert_each_round_raises_the_reward(result.history)


def _same_parameters(first, second):
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_resume_after_a_kill_between_rounds_equals_the_uninterrupted_run(tmp_path, inpo_run):
    _run(tmp_path, "inpo", rounds=1)
    state = json.loads((tmp_path / "run" / "online" / STATE_FILE).read_text())
    assert state["rounds_done"] == 1
    resumed = _run(tmp_path, "inpo", rounds=2)  # a fresh pi_0: round 1 is loaded from its snapshot, not redone
    assert resumed.history == inpo_run.history
    _same_parameters(resumed.model, inpo_run.model)


class Kill(TrainerCallback):
    """Stops the process (an exception) after ``after_steps`` optimizer steps in all, counted across rounds."""

    def __init__(self, after_steps):
        self.after_steps, self.steps = after_steps, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.steps == self.after_steps:
            raise KeyboardInterrupt("killed")


@pytest.mark.slow
def test_resume_after_a_kill_inside_a_round_equals_the_uninterrupted_run(tmp_path, inpo_run):
    """Round 1 trains 4 pairs (1 batch) for 3 epochs = 3 steps, round 2 6 pairs (2 batches) = 6 steps. The kill
    comes at step 7 in all, round 2's 4th step, before its checkpoint-4 is written: round 2 resumes from its
    checkpoint-2 with its saved pairs, round 1 is not redone."""
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "inpo", callbacks=[Kill(after_steps=7)], save_steps=2)
    online = tmp_path / "run" / "online"
    assert json.loads((online / STATE_FILE).read_text())["rounds_done"] == 1
    assert (online / "round-2" / "checkpoint-2").is_dir() and not (online / "round-2" / "checkpoint-4").exists()
    resumed = _run(tmp_path, "inpo", save_steps=2)
    assert resumed.history == inpo_run.history
    _same_parameters(resumed.model, inpo_run.model)


# ------------------------------------------------------------------------------------------------- CLI


def test_online_command_options_come_from_yaml_and_flags(tmp_path):
    from prefopt.cli.online import parse_online_arguments

    config = tmp_path / "online.yaml"
    config.write_text("prompts: sentiment\nrounds: 2\nranking: best_worst\nlearning_rate: 1.0e-4\nloss: vpo\n")
    script_args, online_config, training_args = parse_online_arguments(["--config", str(config), "--samples_per_prompt", "4"])
    assert script_args.prompts == "sentiment" and online_config.rounds == 2 and online_config.ranking == "best_worst"
    assert online_config.samples_per_prompt == 4 and training_args.learning_rate == 1e-4 and training_args.loss == "vpo"
    _, _, defaults = parse_online_arguments([])
    assert defaults.loss == "inpo" and defaults.output_dir == "outputs/online"


@pytest.mark.slow
def test_online_command_runs_a_round_on_a_tiny_checkpoint(tmp_path, capsys):
    from helpers_models import save_tiny_checkpoint
    from prefopt.cli import main as cli

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 1 + 1?\nWhat is 2 + 3?\nWhat is 4 + 4?\n")
    output_dir = tmp_path / "run"
    cli.main(["online", "--model_name_or_path", str(checkpoint), "--prompts", str(prompts), "--task", "arithmetic",
              "--rounds", "1", "--samples_per_prompt", "4", "--max_new_tokens", "6", "--eval_samples_per_prompt", "1",
              "--max_steps", "1", "--per_device_train_batch_size", "2", "--lora_r", "4", "--report_to", "none",
              "--output_dir", str(output_dir)])
    state = json.loads((output_dir / STATE_FILE).read_text())
    assert state["rounds_done"] == 1 and state["settings"]["loss"] == "inpo"
    assert (output_dir / "round-1" / "policy" / "adapter_config.json").is_file()
    assert '"round": 1' in capsys.readouterr().out


@pytest.mark.slow
def test_train_loss_is_reported_when_a_round_has_fewer_steps_than_logging_steps(tmp_path):
    """One round of 1 step (4 pairs, batch 4) with logging_steps=10: no step is logged, its train_loss is still reported."""
    from prefopt.rewards import FunctionReward

    args = PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, output_dir=str(tmp_path / "online"), max_steps=-1,
                                                     num_train_epochs=1, logging_steps=10))
    result = train_online(make_model(), make_tokenizer(), WORDS_PROMPTS, loss="dpo", reward=FunctionReward(good_share),
                          args=args, rounds=1, samples_per_prompt=6, config=OnlineConfig(max_new_tokens=6, eval_samples_per_prompt=1))
    entry = result.history[0]
    assert entry["pairs"] > 0 and math.isfinite(entry["train_loss"])


def test_a_round_with_fewer_pairs_than_one_dropped_batch_says_so_and_keeps_the_policy(tmp_path, caplog):
    """dataloader_drop_last with fewer pairs than a batch leaves no step: the round is reported, not a transformers
    'max_steps must be set' error, and the policy is unchanged."""
    from prefopt.rewards import FunctionReward

    args = PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, output_dir=str(tmp_path / "online"), max_steps=-1, num_train_epochs=1,
                                                     per_device_train_batch_size=len(WORDS_PROMPTS) + 1, dataloader_drop_last=True))
    with caplog.at_level("WARNING", logger="prefopt.online.rounds"):
        result = train_online(make_model(), make_tokenizer(), WORDS_PROMPTS, loss="dpo", reward=FunctionReward(good_share), args=args,
                              rounds=1, samples_per_prompt=6, config=OnlineConfig(max_new_tokens=6, eval_samples_per_prompt=1))
    entry = result.history[0]
    assert 0 < entry["pairs"] <= len(WORDS_PROMPTS) and math.isnan(entry["train_loss"])
    assert any("fewer than one batch of 9 with dataloader_drop_last=True" in record.getMessage() for record in caplog.records)
    initial = make_model().state_dict()
    assert all(torch.equal(value, initial[name]) for name, value in result.model.state_dict().items())
