"""Properties every registered loss must have; parametrized over the registry, so new losses are covered."""

import pytest
import torch

from prefopt.losses import get_loss, list_losses

from helpers_losses import TRAINABLE_FIELDS, full_batch, permuted

LOSSES = list_losses()


@pytest.mark.parametrize("name", LOSSES)
def test_returns_one_value_per_example(name):
    spec = get_loss(name)
    batch = full_batch(spec, batch_size=5)
    assert spec(batch).shape == (5,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("name", LOSSES)
def test_finite_values_and_gradients_at_extreme_margins(name, scale, dtype):
    """Log-probs of magnitude up to 1e4 give margins |h| up to ~1e4: values and gradients stay finite."""
    spec = get_loss(name)
    batch = full_batch(spec, batch_size=8, scale=scale, dtype=dtype)
    # push the margins to the extremes in both directions
    with torch.no_grad():
        batch.policy[::2, 0] = -scale
        batch.policy[1::2, 0] = 0.0
    values = spec(batch)
    assert values.dtype == dtype
    assert torch.isfinite(values).all(), values
    values.mean().backward()
    for field in TRAINABLE_FIELDS:
        gradient = getattr(batch, field).grad
        if gradient is not None:
            assert torch.isfinite(gradient).all(), (field, gradient)
    assert batch.policy.grad is not None, "the loss must depend on the policy log-probs"
    # At |h| ~ 1e4 sigmoid-type losses saturate, and in bfloat16 tiny gradients round to 0: both correct.
    if scale <= 1.0 and dtype == torch.float32:
        assert batch.policy.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_permuting_the_batch_permutes_the_output(name):
    """Examples are independent: reordering rows reorders the losses. Batch-coupled losses (sorting
    across the batch, or normalising by the batch's mean length) give the same values in some order."""
    spec = get_loss(name)
    batch = full_batch(spec, batch_size=7, scale=3.0)
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    original, reordered = spec(batch), spec(permuted(batch, order))
    if spec.batch_coupled:
        torch.testing.assert_close(reordered.sort().values, original.sort().values)
    else:
        torch.testing.assert_close(reordered, original[order])


@pytest.mark.parametrize("name", LOSSES)
def test_does_not_modify_its_input(name):
    spec = get_loss(name)
    batch = full_batch(spec)
    before = {k: v.detach().clone() for k, v in vars(batch).items() if v is not None}
    spec(batch)
    for field, value in before.items():
        torch.testing.assert_close(getattr(batch, field).detach(), value)


@pytest.mark.parametrize("name", LOSSES)
def test_spec_is_complete(name):
    spec = get_loss(name)
    assert spec.name == name
    assert spec.paper and spec.summary
    assert spec.function.__doc__ and spec.function.__module__.split(".")[-1] == name, "one module per loss"
    module_doc = __import__(spec.function.__module__, fromlist=["_"]).__doc__
    if spec.hyperparameters:
        assert module_doc and "default" in module_doc.lower(), "module docstring states the defaults"
    if spec.arxiv:
        assert spec.arxiv in module_doc, "module docstring cites the arXiv id"
    assert ("reference" in spec.required_fields) == spec.needs_reference
    with pytest.raises(Exception):
        spec.__setattr__("name", "other")  # frozen
