"""WinRateCallback and SampleTableCallback (prefopt.callbacks): win rates under rewards and oracles with
hand-worked values and Wilson intervals, every kind of reference, logging through the trainer's log
(trackers get it, training metrics untouched), checkpointed state, and sample tables sent to a fake
wandb, a fake TensorBoard writer and the JSONL fallback."""

import copy
import json
import sys
import types

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.callbacks import SampleTableCallback, WinRateCallback
from prefopt.data.evaluation import wilson_interval
from prefopt.online.evaluation import is_oracle, win_outcomes
from prefopt.rewards import BradleyTerryOracle, FunctionReward, JudgeOracle

PROMPTS = ["say", "tell", "please say"]
Z95 = 1.959963984540054


def _trainer(tmp_path, callbacks, *, loss="dpo", ref_model=None, peft=False, **overrides):
    settings = config_kwargs(tmp_path, **{"max_steps": 2, **overrides})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if peft else None
    return Trainer(make_model(), ref_model=ref_model, args=PrefOptConfig(loss=loss, beta=0.5, **settings),
                   train_dataset=pair_dataset(8), processing_class=make_tokenizer(), callbacks=callbacks, peft_config=lora)


# ------------------------------------------------------------------------------------------ arithmetic


def test_wilson_interval_hand_worked():
    low, high = wilson_interval(50, 100)  # textbook: 50/100 at 95% -> [0.4038, 0.5962]
    assert low == pytest.approx(0.40383, abs=1e-4) and high == pytest.approx(0.59617, abs=1e-4)
    low, high = wilson_interval(10, 10)  # all wins: the lower end is n / (n + z^2), not 1
    assert low == pytest.approx(10 / (10 + Z95**2), abs=1e-9) and high == pytest.approx(1.0)
    low, high = wilson_interval(3.5, 4)  # ties count half: fractional wins are fine
    centre = (3.5 / 4 + Z95**2 / 8) / (1 + Z95**2 / 4)
    assert low < 3.5 / 4 < high and (low + high) / 2 == pytest.approx(centre, abs=1e-9)
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)


def test_win_outcomes_under_a_reward_count_ties_half_and_under_an_oracle_use_its_probability():
    reward = FunctionReward(lambda prompt, response: float(len(response)))
    outcomes = win_outcomes(reward, ["p"] * 3, ["aaa", "a", "aa"], ["a", "aaa", "bb"])
    assert outcomes.tolist() == [1.0, 0.0, 0.5]
    oracle = JudgeOracle(lambda prompt, first, second: 0.25)
    assert win_outcomes(oracle, ["p"] * 2, ["x", "y"], ["u", "v"]).tolist() == [0.25, 0.25]
    bradley_terry = BradleyTerryOracle(reward)
    assert win_outcomes(bradley_terry, ["p"], ["aa"], ["a"]).item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())


@pytest.mark.parametrize(
    "judge, oracle",
    [
        (FunctionReward(lambda prompt, response: 0.0), False),
        (lambda prompts, responses: torch.zeros(len(prompts)), False),
        (JudgeOracle(lambda prompt, first, second: 0.5), True),
        (BradleyTerryOracle(FunctionReward(lambda prompt, response: 0.0)), True),
        (lambda prompts, first, second: torch.full((len(prompts),), 0.5), True),
    ],
)
def test_rewards_and_oracles_are_told_apart(judge, oracle):
    assert is_oracle(judge) is oracle


# ------------------------------------------------------------------------------------- in the trainer


@pytest.mark.slow
@pytest.mark.parametrize("reference_kind", ["ref_model", "peft", "initial_copy"])
def test_win_rate_against_an_unmoved_reference_is_one_half_all_ties(tmp_path, reference_kind):
    # learning rate 0: the policy is its reference, both sample with the same seed, so every pair ties
    callback = WinRateCallback(PROMPTS, FunctionReward(lambda p, r: float(len(r))), every_n_steps=1, n=2, max_new_tokens=4)
    options = {"ref_model": make_model()} if reference_kind == "ref_model" else {}
    trainer = _trainer(tmp_path, [callback], learning_rate=0.0, peft=reference_kind == "peft",
                       loss="simpo" if reference_kind == "initial_copy" else "dpo", **options)
    if reference_kind == "initial_copy":
        assert trainer.ref_model is None and callback.against.kind == "model" and callback.against.model is not trainer.model
    trainer.train()
    assert [step for step, _ in callback.history] == [1, 2]
    for _, metrics in callback.history:
        assert metrics["win_rate"] == 0.5 and metrics["win_rate_ties"] == metrics["win_rate_count"] == 6
        assert metrics["win_rate_ci_low"] == pytest.approx(wilson_interval(3, 6)[0])
    logged = [entry for entry in trainer.state.log_history if "win_rate" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    # the training metrics TRL accumulates between logging steps still reach their own log entries
    assert all("rewards/accuracies" in entry for entry in trainer.state.log_history if "loss" in entry)


def test_win_rate_reaches_the_trackers_and_uses_the_oracle(tmp_path):
    class Tracker(TrainerCallback):
        logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    oracle = JudgeOracle(lambda prompt, first, second: 1.0)
    callback = WinRateCallback(PROMPTS, oracle, every_n_steps=2, max_new_tokens=3, metric_key_prefix="wr")
    trainer = _trainer(tmp_path, [callback, Tracker()], ref_model=make_model(seed=1), max_steps=4)
    trainer.train()
    logged = [entry for entry in Tracker.logs if "wr" in entry]
    assert len(logged) == 2 and all(entry["wr"] == 1.0 and entry["wr_ties"] == 0 for entry in logged)
    assert logged[0]["wr_ci_low"] == pytest.approx(3 / (3 + Z95**2)) and logged[0]["wr_ci_high"] == pytest.approx(1.0)


def test_a_judge_outside_zero_one_is_an_error_naming_the_step(tmp_path):
    callback = WinRateCallback(PROMPTS, JudgeOracle(lambda p, a, b: 0.5), every_n_steps=1, max_new_tokens=2)
    callback.judge = lambda prompts, first, second: torch.full((len(prompts),), float("nan"))
    trainer = _trainer(tmp_path, [callback], ref_model=make_model(seed=1))
    with pytest.raises(ValueError, match="step 1"):
        trainer.train()


def test_options_are_checked():
    with pytest.raises(ValueError, match="at least one prompt"):
        WinRateCallback([], FunctionReward(len))
    with pytest.raises(ValueError, match="every_n_steps"):
        SampleTableCallback(PROMPTS, every_n_steps=0)
    with pytest.raises(ValueError, match="confidence"):
        WinRateCallback(PROMPTS, FunctionReward(len), confidence=1.0)


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise _Killed


@pytest.mark.slow
@pytest.mark.parametrize("make_callback", [
    lambda: WinRateCallback(PROMPTS, FunctionReward(lambda p, r: float(len(r))), every_n_steps=1, max_new_tokens=4),
    lambda: SampleTableCallback(PROMPTS, every_n_steps=1, max_new_tokens=4),
], ids=["win_rate", "sample_table"])
def test_state_is_checkpointed_and_a_resumed_run_continues_it(tmp_path, make_callback):
    def run(name, kill=False, resume=None):
        callback = make_callback()
        reference = make_model(seed=1)
        settings = dict(max_steps=4, learning_rate=5e-3, save_strategy="steps", save_steps=2)
        trainer = _trainer(tmp_path / name, [callback] + ([_KillAt()] if kill else []), ref_model=reference, **settings)
        try:
            trainer.train(resume_from_checkpoint=resume)
        except _Killed:
            pass
        return callback

    full = run("full")
    run("killed", kill=True)
    resumed = run("resumed", resume=str(tmp_path / "killed" / "out" / "checkpoint-2"))
    assert resumed.state_dict() == full.state_dict()
    assert len(next(iter(full.state_dict().values()))) >= 4


# ------------------------------------------------------------------------------------------- sample tables


def test_sample_table_goes_to_wandb_as_one_growing_table(tmp_path, monkeypatch):
    logged = []

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    fake = types.SimpleNamespace(Table=Table, run=types.SimpleNamespace(log=logged.append))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    reward = FunctionReward(lambda p, r: float(len(r)))
    callback = SampleTableCallback(PROMPTS, every_n_steps=1, n=2, max_new_tokens=3, reward=reward, report_to="wandb")
    _trainer(tmp_path, [callback]).train()
    assert len(logged) == 2
    first, second = logged[0]["samples"], logged[1]["samples"]
    assert first.columns == second.columns == ["step", "prompt", "sample", "completion", "reward"]
    assert len(first.data) == 6 and len(second.data) == 12 and second.data[:6] == first.data
    assert [row[0] for row in second.data] == [1] * 6 + [2] * 6
    assert [row[1:3] for row in first.data] == [[p, k] for p in PROMPTS for k in (0, 1)]
    assert all(row[4] == float(len(row[3])) for row in second.data)
    assert not (tmp_path / "out" / "samples.jsonl").exists()  # a tracker took it: no fallback file


def test_sample_table_goes_to_tensorboard_as_text(tmp_path):
    class Writer:
        texts = []

        def add_text(self, tag, text, step):
            self.texts.append((tag, text, step))

    class FakeTensorBoard(TrainerCallback):
        tb_writer = Writer()

    callback = SampleTableCallback(["a|b"], every_n_steps=2, max_new_tokens=2, report_to=["tensorboard"], table_name="gen")
    _trainer(tmp_path, [FakeTensorBoard(), callback], max_steps=2).train()
    ((tag, text, step),) = Writer.texts
    assert tag == "gen" and step == 2
    lines = text.splitlines()
    assert lines[0] == "| step | prompt | sample | completion |" and lines[2].startswith("| 2 | a\\|b | 0 | ")


def test_sample_table_falls_back_to_jsonl_without_a_tracker(tmp_path):
    callback = SampleTableCallback(PROMPTS, every_n_steps=1, max_new_tokens=3)  # report_to="none" in the config
    trainer = _trainer(tmp_path, [callback])
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert rows == callback.rows and [row["step"] for row in rows] == [1, 1, 1, 2, 2, 2]
    assert {row["prompt"] for row in rows} == set(PROMPTS)
    explicit = tmp_path / "elsewhere" / "s.jsonl"
    other = SampleTableCallback(PROMPTS, every_n_steps=2, max_new_tokens=3, jsonl_path=str(explicit))
    _trainer(tmp_path / "second", [other]).train()
    assert len(explicit.read_text().splitlines()) == 3
