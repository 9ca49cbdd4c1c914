"""TRL's loss modifiers as prefopt building blocks give TRL's value and gradient on the same log-probs.

TRL 1.16 applies three modifiers inside `DPOTrainer._compute_loss` to every `loss_type`:
``f_divergence_type`` (f-DPO), ``ld_alpha`` (LD-DPO) and ``use_weighting`` (WPO). prefopt has them as
`combine_losses(..., f_divergence=...)`, `length_desensitized_logps` and `LogProbs.weights` from
`wpo_weights`. As in test_losses_trl.py, TRL's own method runs on a stand-in model whose per-token
log-probs are ours, so both sides see the same numbers.
"""

import math

import pytest
import torch
from test_losses_trl import prefopt_batch, random_sequences, trl_loss

from prefopt.losses import (
    F_DIVERGENCES,
    LogProbs,
    combine_losses,
    f_prime,
    get_loss,
    length_desensitized_logps,
    list_losses,
    wpo_weights,
)

F_DPO_LOSSES = [name for name in list_losses() if get_loss(name).log_ratio_form and get_loss(name).trl_name]
# TRL 1.16 applies the WPO weights in place (`per_sequence_loss *= ...`), which autograd refuses for these two
# (hinge: the output of relu is needed for its backward; sft: an expanded scalar); checked by hand instead.
TRL_WEIGHTING_FAILS = {"hinge", "sft"}
WEIGHTABLE_TRL_LOSSES = [
    name
    for name in list_losses()
    if get_loss(name).trl_name and get_loss(name).example_weights and name not in TRL_WEIGHTING_FAILS
]
LABEL_SMOOTHING, TAU = 0.2, 0.05


def hyperparameters(name, beta=0.3):
    accepted = get_loss(name).hyperparameters
    return {k: v for k, v in {"beta": beta, "epsilon": LABEL_SMOOTHING, "tau": TAU}.items() if k in accepted}


def assert_same_value_and_gradient(actual, expected, per_token, completion_mask, rtol=1e-6, atol=1e-9):
    (actual_gradient,) = torch.autograd.grad(actual, per_token, retain_graph=True)
    (expected_gradient,) = torch.autograd.grad(expected, per_token, retain_graph=True)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    response_tokens = completion_mask[:, 1:].bool()
    torch.testing.assert_close(actual_gradient[response_tokens], expected_gradient[response_tokens], rtol=rtol, atol=atol)


def test_f_prime_hand_worked_values():
    """log t = log 2: forward KL 1 - 1/2 = 0.5; JS log(2*2/3) = log(4/3); alpha 0.5: (2^-0.5 - 1)/-0.5."""
    log_t = torch.tensor([math.log(2.0)], dtype=torch.float64)
    assert f_prime(log_t, "reverse_kl").item() == pytest.approx(math.log(2))
    assert f_prime(log_t, "forward_kl").item() == pytest.approx(0.5)
    assert f_prime(log_t, "js_divergence").item() == pytest.approx(math.log(4 / 3))
    assert f_prime(log_t, "alpha_divergence", 0.5).item() == pytest.approx((2**-0.5 - 1) / -0.5)
    assert f_prime(log_t, "alpha_divergence", 1.0).item() == pytest.approx(math.log(2))  # limit alpha -> 1


@pytest.mark.parametrize("divergence, alpha", [(d, 0.5) for d in F_DIVERGENCES] + [("alpha_divergence", 1.5)])
@pytest.mark.parametrize("name", F_DPO_LOSSES)
def test_f_divergence_matches_trl(name, divergence, alpha):
    per_token, completion_mask, reference, lengths = random_sequences(seed=4, scale=0.3)
    if divergence == "alpha_divergence":  # TRL's alpha case handles float16/bfloat16/float32 only
        per_token, reference = per_token.detach().float().requires_grad_(True), reference.float()
    spec = get_loss(name)
    expected = trl_loss(
        [spec.trl_name], [1.0], per_token, completion_mask, reference, 0.3, LABEL_SMOOTHING, TAU,
        f_divergence_type=divergence, f_alpha_divergence_coef=alpha,
    )
    loss = combine_losses(name, f_divergence=divergence, f_alpha_divergence_coef=alpha)
    actual = loss(prefopt_batch(per_token, completion_mask, reference, lengths), **hyperparameters(name)).mean()
    single = per_token.dtype == torch.float32
    assert_same_value_and_gradient(
        actual, expected, per_token, completion_mask, rtol=1e-4 if single else 1e-6, atol=1e-7 if single else 1e-9
    )


def test_f_divergence_leaves_reference_free_components_alone():
    """TRL's sft under f-DPO is plain SFT: the combination [sigmoid, sft] matches TRL's with forward KL."""
    per_token, completion_mask, reference, lengths = random_sequences(seed=5, scale=0.3)
    expected = trl_loss(
        ["sigmoid", "sft"], [1.0, 0.5], per_token, completion_mask, reference, 0.1, 0.0, TAU,
        f_divergence_type="forward_kl",
    )
    loss = combine_losses([("dpo", 1.0), ("sft", 0.5)], f_divergence="forward_kl")
    actual = loss(prefopt_batch(per_token, completion_mask, reference, lengths), beta=0.1).mean()
    assert_same_value_and_gradient(actual, expected, per_token, completion_mask)


def test_f_divergence_refuses_losses_not_in_log_ratio_form_with_trls_wording():
    refused = [name for name in list_losses() if get_loss(name).needs_reference and not get_loss(name).log_ratio_form]
    for name in refused:
        if get_loss(name).responses == "single":
            continue
        with pytest.raises(ValueError, match="is only supported for the following loss types"):
            combine_losses(name, f_divergence="js_divergence")
    with pytest.raises(ValueError, match="Unknown f_divergence_type"):
        combine_losses("dpo", f_divergence="hellinger")


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("name", ["dpo", "ipo", "hinge"])
def test_ld_alpha_matches_trl(name, alpha):
    per_token, completion_mask, reference, lengths = random_sequences(seed=6)
    spec = get_loss(name)
    expected = trl_loss(
        [spec.trl_name], [1.0], per_token, completion_mask, reference, 0.3, 0.0, TAU, ld_alpha=alpha
    )
    batch_size = reference.shape[0]
    response_index = torch.stack([torch.arange(batch_size), torch.arange(batch_size) + batch_size], 1)
    rows = length_desensitized_logps(per_token, completion_mask[:, 1:], response_index, alpha)
    batch = LogProbs(policy=rows[response_index], reference=reference, lengths=lengths)
    actual = spec(batch, beta=0.3).mean()
    assert_same_value_and_gradient(actual, expected, per_token, completion_mask)


def test_ld_alpha_hand_worked():
    """Responses of 3 and 1 tokens (log-probs -1 each), alpha 0.5: shared length 1 -> -1 + 0.5 * -2 = -2 and -1."""
    per_token = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]])
    rows = length_desensitized_logps(per_token, mask, torch.tensor([[0, 1]]), 0.5)
    torch.testing.assert_close(rows, torch.tensor([-2.0, -1.0]))
    # K-wise: the public length is the shortest of all K responses of the example; -1 marks a missing response
    rows = length_desensitized_logps(per_token.repeat(2, 1), mask.repeat(2, 1), torch.tensor([[0, 2, 1], [3, -1, -1]]), 0.5)
    torch.testing.assert_close(rows, torch.tensor([-2.0, -1.0, -2.0, -1.0]))


@pytest.mark.parametrize("name", WEIGHTABLE_TRL_LOSSES)
def test_wpo_weights_match_trl(name):
    per_token, completion_mask, reference, lengths = random_sequences(seed=7, scale=0.5)
    generator = torch.Generator().manual_seed(8)
    log_sum_sq_probs = -torch.rand(per_token.shape, generator=generator, dtype=torch.float64)
    spec = get_loss(name)
    expected = trl_loss(
        [spec.trl_name], [1.0], per_token, completion_mask, reference, 0.3, LABEL_SMOOTHING, TAU,
        use_weighting=True, log_sum_sq_probs=log_sum_sq_probs,
    )
    batch_size = reference.shape[0]
    response_index = torch.stack([torch.arange(batch_size), torch.arange(batch_size) + batch_size], 1)
    weights = wpo_weights(per_token, log_sum_sq_probs, completion_mask[:, 1:])[response_index]
    plain = prefopt_batch(per_token, completion_mask, reference, lengths)
    batch = LogProbs(policy=plain.policy, reference=reference, lengths=lengths, weights=weights)
    actual = combine_losses(name)(batch, **hyperparameters(name)).mean()
    assert_same_value_and_gradient(actual, expected, per_token, completion_mask)


@pytest.mark.parametrize("name", sorted(TRL_WEIGHTING_FAILS))
def test_wpo_weights_multiply_each_example_by_its_responses_weights(name):
    per_token, completion_mask, reference, lengths = random_sequences(seed=9)
    plain = prefopt_batch(per_token, completion_mask, reference, lengths)
    weights = torch.rand(plain.policy.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    weighted = LogProbs(policy=plain.policy, reference=reference, lengths=lengths, weights=weights)
    expected = combine_losses(name)(plain, **hyperparameters(name)) * weights[:, 0] * weights[:, 1]
    torch.testing.assert_close(combine_losses(name)(weighted, **hyperparameters(name)), expected)


def test_wpo_weights_hand_worked_and_refused_for_sorting_losses():
    """Two tokens with log p - log sum p^2 = -1 and -3: weight exp(-2)."""
    weights = wpo_weights(torch.tensor([[-1.0, -2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 1]]))
    torch.testing.assert_close(weights, torch.tensor([math.exp(-2.0)]))
    batch = LogProbs(policy=torch.zeros(2, 2), reference=torch.zeros(2, 2), weights=torch.ones(2, 2))
    for name in [n for n in list_losses() if not get_loss(n).example_weights]:
        with pytest.raises(NotImplementedError, match="WPO-style weighting is not implemented"):
            combine_losses(name)(batch)
