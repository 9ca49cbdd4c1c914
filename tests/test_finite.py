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
from prefopt._finite import NonFiniteError, check_gradients, check_inputs, check_losses
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
            values = values + torch.tensor([0.0, math.nan, 0.0, 0.0], dtype=values.dtype)
        return values

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
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of \['error', 'skip'\], got 'ignore'"):
        PrefOptConfig("out", loss="dpo", on_nonfinite="ignore", use_cpu=True, bf16=False)
