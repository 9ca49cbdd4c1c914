"""Running loss state is checkpointed: a run killed after a checkpoint and resumed from it continues exactly as
the uninterrupted run (same per-step losses, same final weights, same callback state). One test per stateful
callback; the kill is an exception raised right after the checkpoint is written."""

import copy

import pytest

import test_callbacks_sampling
import torch
from transformers import TrainerCallback

from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.callbacks import ReferenceRefreshCallback, RewardShiftCallback
from prefopt.training.state import LOSS_STATE_FILE

TOTAL_STEPS, CHECKPOINT_STEP = 4, 2


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # right after the checkpoint is written
        if state.global_step == self.step:
            raise _Killed


def _run(tmp_path, name, loss, make_callback, *, kill_at=None, resume_from=None, with_reference=False):
    model = make_model()
    reference = copy.deepcopy(model) if with_reference else None
    callback = make_callback()
    callbacks = [callback] + ([_KillAt(kill_at)] if kill_at is not None else [])
    settings = config_kwargs(tmp_path / name, max_steps=TOTAL_STEPS, learning_rate=5e-3, save_strategy="steps",
                             save_steps=CHECKPOINT_STEP)
    trainer = Trainer(model, ref_model=reference, train_dataset=pair_dataset(16), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss=loss, beta=0.5, **settings), callbacks=callbacks)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except _Killed:
        pass
    return trainer, callback


def _losses_by_step(trainer):
    return {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


def _assert_resume_equals_uninterrupted(tmp_path, loss, make_callback, with_reference=False):
    full, full_callback = _run(tmp_path, "full", loss, make_callback, with_reference=with_reference)
    killed, _ = _run(tmp_path, "killed", loss, make_callback, kill_at=CHECKPOINT_STEP, with_reference=with_reference)
    assert killed.state.global_step == CHECKPOINT_STEP
    checkpoint = tmp_path / "killed" / "out" / f"checkpoint-{CHECKPOINT_STEP}"
    assert (checkpoint / LOSS_STATE_FILE).exists()
    resumed, resumed_callback = _run(tmp_path, "resumed", loss, make_callback, resume_from=str(checkpoint),
                                     with_reference=with_reference)
    full_losses, resumed_losses = _losses_by_step(full), _losses_by_step(resumed)
    assert sorted(resumed_losses) == list(range(1, TOTAL_STEPS + 1))  # steps 1-2 come from the checkpoint's log
    for step, value in resumed_losses.items():
        assert value == pytest.approx(full_losses[step], abs=1e-6), f"step {step}"
    for full_parameter, resumed_parameter in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(resumed_parameter, full_parameter, atol=1e-6, rtol=0)
    return full, full_callback, resumed, resumed_callback


@pytest.mark.slow
def test_reward_shift_resumes_exactly(tmp_path):
    full, shift, resumed, resumed_shift = _assert_resume_equals_uninterrupted(tmp_path, "bco_pair", RewardShiftCallback)
    assert resumed_shift.count == shift.count == 2 * 4 * TOTAL_STEPS  # 2 responses x 4 pairs per step
    assert resumed_shift.mean == pytest.approx(shift.mean, abs=1e-9) and shift.mean != 0.0


@pytest.mark.slow
def test_reference_refresh_resumes_exactly(tmp_path):
    def refresh():
        return ReferenceRefreshCallback(every_n_steps=1, mixup_alpha=0.6)

    full, callback, resumed, resumed_callback = _assert_resume_equals_uninterrupted(
        tmp_path, "dpo", refresh, with_reference=True
    )
    assert resumed_callback.refreshes == callback.refreshes == TOTAL_STEPS
    for full_parameter, resumed_parameter in zip(full.ref_model.parameters(), resumed.ref_model.parameters(), strict=True):
        torch.testing.assert_close(resumed_parameter, full_parameter, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_resuming_without_the_state_file_is_refused(tmp_path):
    """A checkpoint without the callbacks' state cannot continue the run exactly: it raises, naming the file."""
    trainer, _ = _run(tmp_path, "plain", "dpo", lambda: TrainerCallback())  # no running state: nothing to save
    checkpoint = tmp_path / "plain" / "out" / f"checkpoint-{CHECKPOINT_STEP}"
    assert checkpoint.exists() and not (checkpoint / LOSS_STATE_FILE).exists()
    with pytest.raises(ValueError, match=LOSS_STATE_FILE):
        _run(tmp_path, "shifted", "bco_pair", RewardShiftCallback, resume_from=str(checkpoint))


# The resume test of each built-in stateful callback; a new one in prefopt.callbacks must add its own here.
RESUME_TESTS = {
    "RewardShiftCallback": test_reward_shift_resumes_exactly,
    "ReferenceRefreshCallback": test_reference_refresh_resumes_exactly,
    # sampling callbacks: one kill-and-resume test parametrized over both (tests/test_callbacks_sampling.py)
    "WinRateCallback": test_callbacks_sampling.test_state_is_checkpointed_and_a_resumed_run_continues_it,
    "SampleTableCallback": test_callbacks_sampling.test_state_is_checkpointed_and_a_resumed_run_continues_it,
}


def test_every_built_in_stateful_callback_has_a_resume_test():
    import inspect

    import prefopt.callbacks as module
    from prefopt.callbacks import LossStateCallback, StatefulCallback

    built_in = {
        name for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, StatefulCallback)
        and value not in (StatefulCallback, LossStateCallback) and value.__module__ == module.__name__
    }
    assert built_in == set(RESUME_TESTS), f"stateful callbacks without a resume test: {built_in - set(RESUME_TESTS)}"
