"""Every loss TRL 1.16 also has gives TRL's value and gradient on the same log-probs.

TRL computes its losses inside `DPOTrainer._compute_loss`, which reads per-token log-probs from the
model output. We call that very method with a stand-in model whose "per-token log-probs" are a
tensor we control (non-zero only on completion tokens) and with precomputed reference log-probs,
so TRL's own loss code runs on exactly the numbers prefopt's losses get.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from trl import DPOTrainer  # noqa: E402

from prefopt.losses import LogProbs, combine_losses, get_loss, list_losses  # noqa: E402

TRL_EQUIVALENTS = [name for name in list_losses() if get_loss(name).trl_name]
PROMPT_LENGTH = 3


class PerTokenLogProbsModel:
    """Stands in for a causal LM: returns the given per-token log-probs and zero side statistics."""

    def __init__(self, per_token_logps, log_sum_sq_probs=None):
        self.per_token_logps = per_token_logps
        self.log_sum_sq_probs = log_sum_sq_probs

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(
            log_probs=self.per_token_logps,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
            log_sum_sq_probs=self.log_sum_sq_probs,
        )


def trl_loss(
    loss_types, loss_weights, per_token_logps, completion_mask, reference, beta, label_smoothing, tau, **modifiers
):
    """TRL 1.16's loss for rows [chosen_1..chosen_B, rejected_1..rejected_B].

    ``modifiers`` override TRL's loss modifiers (``ld_alpha``, ``use_weighting``, ``f_divergence_type``,
    ``f_alpha_divergence_coef``); ``log_sum_sq_probs`` feeds the stand-in model's WPO output."""
    log_sum_sq_probs = modifiers.pop("log_sum_sq_probs", None)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        f_alpha_divergence_coef=1.0,
        args=SimpleNamespace(discopop_tau=tau),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    vars(trainer).update(modifiers)
    inputs = {
        "input_ids": torch.ones_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": reference[:, 0],
        "ref_rejected_logps": reference[:, 1],
    }
    model = PerTokenLogProbsModel(per_token_logps, log_sum_sq_probs)
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def random_sequences(batch_size=6, max_completion=7, seed=0, scale=1.0):
    """Per-token log-probs on completion positions only, TRL's row layout, plus reference sequence log-probs."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_completion + 1, (2 * batch_size,), generator=generator)
    total = PROMPT_LENGTH + max_completion
    completion_mask = torch.zeros(2 * batch_size, total, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        completion_mask[row, PROMPT_LENGTH : PROMPT_LENGTH + length] = 1
    # token t is predicted at position t - 1, so per-token log-probs live on the shifted mask
    shifted = completion_mask[:, 1:].to(torch.float64)
    per_token = -scale * torch.rand(2 * batch_size, total - 1, generator=generator, dtype=torch.float64) * shifted
    reference = -scale * 3 * torch.rand(batch_size, 2, generator=generator, dtype=torch.float64)
    return per_token.requires_grad_(True), completion_mask, reference, lengths.view(2, batch_size).T


def prefopt_batch(per_token, completion_mask, reference, lengths):
    sequence = (per_token * completion_mask[:, 1:]).sum(dim=1)  # a real model's sum over response tokens
    batch_size = reference.shape[0]
    policy = torch.stack([sequence[:batch_size], sequence[batch_size:]], dim=1)
    return LogProbs(policy=policy, reference=reference, lengths=lengths)


def hyperparameters_for(name, beta, label_smoothing, tau):
    """Map TRL's shared config fields onto the prefopt loss's own hyper-parameter names."""
    accepted = get_loss(name).hyperparameters
    candidates = {"beta": beta, "epsilon": label_smoothing, "tau": tau}
    return {k: v for k, v in candidates.items() if k in accepted}


@pytest.mark.parametrize("seed, scale", [(0, 1.0), (1, 10.0), (2, 0.1)])
@pytest.mark.parametrize("name", TRL_EQUIVALENTS)
def test_same_value_and_gradient_as_trl(name, seed, scale):
    spec = get_loss(name)
    beta, tau = 0.3, 0.05
    # TRL's exo_pair needs label smoothing > 0; robust needs < 0.5; 0.2 exercises both and aot's smoothing
    label_smoothing = 0.2 if "epsilon" in spec.hyperparameters else 0.0
    per_token, completion_mask, reference, lengths = random_sequences(seed=seed, scale=scale)

    expected = trl_loss([spec.trl_name], [1.0], per_token, completion_mask, reference, beta, label_smoothing, tau)
    (expected_gradient,) = torch.autograd.grad(expected, per_token)

    batch = prefopt_batch(per_token, completion_mask, reference, lengths)
    actual = spec(batch, **hyperparameters_for(name, beta, label_smoothing, tau)).mean()
    (actual_gradient,) = torch.autograd.grad(actual, per_token)

    # Everything runs in float64; 1e-6 leaves room only for TRL's float32 constants (exo_pair's epsilon).
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)
    # Gradients on prompt/padding positions are artefacts of the stand-in model (a real one masks them).
    response_tokens = completion_mask[:, 1:].bool()
    torch.testing.assert_close(actual_gradient[response_tokens], expected_gradient[response_tokens], rtol=1e-6, atol=1e-9)


def test_weighted_combination_matches_trl_loss_weights():
    """TRL loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5] == prefopt DPO + 0.5 SFT."""
    per_token, completion_mask, reference, lengths = random_sequences(seed=3)
    expected = trl_loss(["sigmoid", "sft"], [1.0, 0.5], per_token, completion_mask, reference, 0.1, 0.0, 0.05)
    combined = combine_losses([("dpo", 1.0), ("sft", 0.5)])
    actual = combined(prefopt_batch(per_token, completion_mask, reference, lengths), beta=0.1).mean()
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_discopop_stays_finite_where_trl_overflows():
    """At a margin of -1e4, TRL's exp(-z) * m is inf * 0 = NaN; prefopt's log-space form gives the limit."""
    batch = LogProbs(policy=torch.tensor([[-1e4, 0.0]]), reference=torch.zeros(1, 2))
    value = get_loss("discopop")(batch)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, torch.tensor([1e3]))  # -log sigma(-1000) ~ 1000, m ~ 0
