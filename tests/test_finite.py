"""Non-finite values never train silently: losses refuse NaN/inf inputs at the boundary (every registered loss,
random positions), and the trainer stops with the step, the value and the batch rows, or skips and counts."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_losses import full_batch
from helpers_trainer import config_kwargs, kwise_dataset, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.training.nonfinite import NonFiniteError, check_gradients, check_inputs, check_losses
from prefopt.losses._batch import LOG_ZERO_FIELDS
from prefopt.losses import LOGPROBS_FIELDS, LogProbs, get_loss, list_losses, register_loss, unregister_loss

LOSSES = list_losses()
BAD_VALUES = [math.nan, math.inf, -math.inf]


def _float_fields(batch):
    return [name for name in LOGPROBS_FIELDS if getattr(batch, name) is not None and getattr(batch, name).is_floating_point()]


@pytest.mark.parametrize("name", LOSSES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_loss_refuses_a_non_finite_input_anywhere(name, data):
    spec = get_loss(name)
    batch = full_batch(spec, batch_size=4)
    field = data.draw(st.sampled_from(_float_fields(batch)), label="field")
    values = getattr(batch, field).detach().clone()
    position = tuple(data.draw(st.integers(0, size - 1)) for size in values.shape)
    # -inf is log 0 in a field that may hold it (f-DPG's constrained target), so there only NaN and +inf are bad
    bad_values = [v for v in BAD_VALUES if not (field in LOG_ZERO_FIELDS and v == -math.inf)]
    values[position] = data.draw(st.sampled_from(bad_values), label="value")
    broken = LogProbs(**{**vars(batch), field: values})
    with pytest.raises(ValueError, match=rf"loss '{name}': LogProbs\.{field} holds a NaN or inf in batch rows \[{position[0]}\]"):
        spec(broken)


def test_a_constrained_target_may_give_a_response_zero_probability():
    """f-DPG's GDC target P(y) = a(y) b(y) is 0 where the constraint fails: log P = -inf is a value there."""
    policy = torch.tensor([[-2.0], [-3.0]])
    target = torch.tensor([[-2.5], [-math.inf]])
    values = get_loss("fdpg")(LogProbs(policy=policy, proposal=policy.clone(), target=target))
    assert torch.isfinite(values).all()
    with pytest.raises(ValueError, match=r"LogProbs\.target holds a NaN or inf in batch rows \[1\]"):
        get_loss("fdpg")(LogProbs(policy=policy, proposal=policy.clone(), target=torch.tensor([[-2.5], [math.nan]])))


def test_padding_columns_may_hold_anything():
    """K-wise padding (mask False) is not data: a NaN there is no error, and does not change the value."""
    spec = get_loss("plackett_luce")
    policy = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    clean = spec(LogProbs(policy=policy, reference=torch.zeros(2, 3), mask=mask))
    padded = policy.clone()
    padded[1, 2] = math.nan
    assert torch.equal(spec(LogProbs(policy=padded, reference=torch.zeros(2, 3), mask=mask)), clean)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_losses_refuse_non_finite_hyperparameters(value):
    with pytest.raises(ValueError, match=r"loss 'dpo': beta must be a finite number > 0"):
        get_loss("dpo")(full_batch(get_loss("dpo")), beta=float(value))


def test_guard_names_step_field_component_and_rows():
    fields = {"policy": torch.tensor([[0.0, -1.0], [math.nan, 0.0], [0.0, math.inf]]), "lengths": torch.ones(3, 2)}
    with pytest.raises(NonFiniteError, match=r"train step 7: LogProbs.policy is nan/inf in batch rows \[1, 2\]") as caught:
        check_inputs(7, fields)
    assert (caught.value.where, caught.value.rows) == ("LogProbs.policy", [1, 2])
    with pytest.raises(NonFiniteError, match=r"eval step 3: loss component 'sft' is nan in batch rows \[0\]"):
        check_losses(3, {"dpo": torch.zeros(2), "sft": torch.tensor([math.nan, 1.0])}, torch.tensor(math.nan),
                     context="eval")
    with pytest.raises(NonFiniteError, match="the total loss is inf"):
        check_losses(3, {"dpo": torch.zeros(2)}, torch.tensor(math.inf))
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad, layer.bias.grad = torch.zeros(2, 2), torch.tensor([0.0, math.nan])
    with pytest.raises(NonFiniteError, match=r"training step 5: the gradient is non-finite in 1 parameter\(s\): bias"):
        check_gradients(5, layer.named_parameters())
    layer.bias.grad = torch.zeros(2)
    check_gradients(5, layer.named_parameters())  # finite: no error


@pytest.fixture
def nan_on_second_call():
    """A registered loss that is DPO-like but NaN for batch row 1 on its second call (the second step)."""
    calls = []

    @register_loss("nan_on_second_call", paper="a test", needs_reference=False)
    def loss(batch, *, beta=0.1):
        """DPO without a reference; row 1 of the second call's batch is NaN."""
        calls.append(1)
        values = -torch.nn.functional.logsigmoid(beta * (batch.policy[:, 0] - batch.policy[:, 1]))
        if len(calls) == 2:
            values = values + torch.zeros_like(values).index_fill(0, torch.tensor([1]), math.nan)
        return values

    loss.calls = calls  # a test that trains twice clears it between runs
    yield "nan_on_second_call"
    unregister_loss("nan_on_second_call")


def _trainer(tmp_path, loss, **overrides):
    args = PrefOptConfig(loss=loss, **config_kwargs(tmp_path, **overrides))
    return Trainer(make_model(), train_dataset=pair_dataset(12), processing_class=make_tokenizer(), args=args)


def test_a_nan_component_stops_training_at_its_step(tmp_path, nan_on_second_call):
    trainer = _trainer(tmp_path, nan_on_second_call)
    with pytest.raises(NonFiniteError, match=r"train step 2: loss component 'nan_on_second_call' is nan in batch rows \[1\]"):
        trainer.train()
    assert all(not math.isnan(log["loss"]) and log["loss"] != 0.0 for log in trainer.state.log_history if "loss" in log)


def test_nan_weights_stop_training_naming_the_policy(tmp_path):
    trainer = _trainer(tmp_path, "dpo")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteError, match=r"train step 1: LogProbs.policy is nan in batch rows \[0, 1, 2, 3\]"):
        trainer.train()


def test_skip_counts_the_batch_logs_no_zero_loss_and_keeps_the_weights(tmp_path, nan_on_second_call):
    trainer = _trainer(tmp_path, nan_on_second_call, on_nonfinite="skip")
    trainer.train()
    losses = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["nonfinite_skipped"] for log in losses] == [0, 1, 1]
    assert math.isnan(losses[1]["loss"])  # the skipped step reads NaN, never 0.0
    assert all(math.isfinite(log["loss"]) and log["loss"] > 0 for log in (losses[0], losses[2]))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_non_finite_gradients_stop_training_or_are_skipped(tmp_path):
    trainer = _trainer(tmp_path, "dpo")
    parameter_name, parameter = next(iter(trainer.model.named_parameters()))
    parameter.register_hook(lambda gradient: gradient * math.nan)
    with pytest.raises(NonFiniteError, match=rf"training step 1: the gradient is non-finite in 1 parameter\(s\): .*{parameter_name.split('.')[-1]}"):
        trainer.train()

    trainer = _trainer(tmp_path, "dpo", on_nonfinite="skip")
    parameter = next(iter(trainer.model.parameters()))
    before = parameter.detach().clone()
    parameter.register_hook(lambda gradient: gradient * math.nan)
    trainer.train()
    assert [log["nonfinite_skipped"] for log in trainer.state.log_history if "loss" in log] == [1, 2, 3]
    assert all(math.isnan(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    assert torch.equal(parameter.detach(), before)


def test_on_nonfinite_is_validated():
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of \['error', 'stop', 'skip'\], got 'ignore'"):
        PrefOptConfig("out", loss="dpo", on_nonfinite="ignore", use_cpu=True, bf16=False)


def test_on_nonfinite_defaults_to_stop_only_for_a_trl_style_config():
    """TRL's DPOTrainer trains on through NaN, so a TRL-style config (loss chosen by loss_type) gets 'stop': train()
    returns, as TRL's does, but from finite weights. A prefopt config raises; an explicit value always wins."""
    common = dict(use_cpu=True, bf16=False)
    assert PrefOptConfig("out", **common).nonfinite_policy() == "stop"
    assert PrefOptConfig("out", loss_type=["ipo"], **common).nonfinite_policy() == "stop"
    assert PrefOptConfig("out", loss="dpo", **common).nonfinite_policy() == "error"
    assert PrefOptConfig("out", on_nonfinite="error", **common).nonfinite_policy() == "error"
    assert PrefOptConfig("out", loss="dpo", on_nonfinite="skip", **common).nonfinite_policy() == "skip"
    late = PrefOptConfig("out", **common)
    late.loss = "dpo"  # set after construction (as the online round loop does): read when training
    assert late.nonfinite_policy() == "error"


def _weights(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_stop_ends_training_with_the_weights_of_the_last_finite_step(tmp_path, nan_on_second_call, accumulation):
    """The loss is NaN on its second call: with accumulation 1 that is step 2 (the weights stay those of step 1);
    with accumulation 2 it is the second batch of step 1, and the first batch's gradient is not applied alone."""
    per_device = 4 // accumulation
    finite = _trainer(tmp_path / "finite", nan_on_second_call, max_steps=1, per_device_train_batch_size=per_device)
    if accumulation == 1:
        finite.train()  # one finite call: the weights of step 1
    expected = _weights(finite.model)  # accumulation 2: the initial weights (same seed, same model)
    get_loss(nan_on_second_call).function.calls.clear()

    trainer = _trainer(tmp_path / "stopped", nan_on_second_call, on_nonfinite="stop", max_steps=3,
                       per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
    output = trainer.train()
    stop_step = 3 - accumulation  # 2 (accumulation 1) or 1
    assert trainer.nonfinite_stop["step"] == stop_step and trainer.nonfinite_stop["where"] == "loss/nan_on_second_call"
    assert trainer.state.global_step == stop_step  # no step after the stop
    assert output.metrics["nonfinite_stopped_at_step"] == stop_step
    assert [log["nonfinite_stopped_at_step"] for log in trainer.state.log_history if "nonfinite_stopped_at_step" in log][-1:] == [stop_step]
    weights = _weights(trainer.model)
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    summary = trainer.summary()
    assert summary["stopped by a non-finite value at step"] == stop_step and summary["non-finite value"] == "loss/nan_on_second_call"


def test_a_plain_trl_config_stops_on_non_finite_gradients_and_returns(tmp_path, caplog):
    """The drop-in case: a plain trl.DPOConfig (as TRL's own tests pass) never raises and never steps into NaN."""
    from trl import DPOConfig

    settings = config_kwargs(tmp_path)
    settings.pop("ref_logps_cache_dir")
    trainer = Trainer(make_model(), train_dataset=pair_dataset(12), processing_class=make_tokenizer(), args=DPOConfig(**settings))
    parameter = next(iter(trainer.model.parameters()))
    before = parameter.detach().clone()
    parameter.register_hook(lambda gradient: gradient * math.nan)
    with caplog.at_level("ERROR", logger="prefopt.training.trainer"):
        trainer.train()
    assert trainer.nonfinite_stop["step"] == 1 and trainer.nonfinite_stop["where"] == "gradients"
    assert trainer.state.global_step == 1 and torch.equal(parameter.detach(), before)
    assert any("stopping training at step 1 (on_nonfinite='stop')" in record.getMessage() for record in caplog.records)
    assert any("training ended early" in record.getMessage() for record in caplog.records)
    trainer.train()  # a second call starts afresh (and stops again on the same hook)
    assert trainer.nonfinite_stop["step"] == 1
