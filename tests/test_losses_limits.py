"""Limiting cases where a loss must reduce to DPO, and rDPO's unbiasedness under random label flips."""

import dataclasses

import pytest
import torch

from prefopt.losses import LogProbs, get_loss

from helpers_losses import full_batch

DPO = get_loss("dpo")


def random_pairs(seed=0, batch_size=16):
    return full_batch(get_loss("bvpo"), batch_size=batch_size, scale=20.0, seed=seed)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
@pytest.mark.parametrize(
    "name, hyperparameters",
    [
        ("rdpo", {"epsilon": 0.0}),
        ("cdpo", {"epsilon": 0.0}),
        ("rpo", {"eta": 0.0}),
        ("rpo", {"eta": 0.0, "variant": "mean"}),
        ("vpo", {"alpha": 0.0}),
        ("vpo", {"alpha": 0.0, "mode": "online"}),
        ("bvpo", {"alpha": 1.0}),
        ("plackett_luce", {}),
    ],
)
def test_reduces_to_dpo(name, hyperparameters, beta):
    batch = random_pairs()
    torch.testing.assert_close(get_loss(name)(batch, beta=beta, **hyperparameters), DPO(batch, beta=beta))


def test_plackett_luce_with_k2_equals_dpo_also_through_a_mask():
    """A K = 3 list whose last column is masked is the pair of its first two columns."""
    pairs = random_pairs()
    padded = LogProbs(
        policy=torch.cat([pairs.policy, torch.full_like(pairs.policy[:, :1], 123.0)], dim=1),
        reference=torch.cat([pairs.reference, torch.zeros_like(pairs.reference[:, :1])], dim=1),
        mask=torch.tensor([[True, True, False]]).expand(pairs.batch_size, 3),
    )
    torch.testing.assert_close(get_loss("plackett_luce")(padded, beta=0.3), DPO(pairs, beta=0.3))


def test_bvpo_alpha_zero_is_dpo_on_the_empty_trace_view():
    batch = random_pairs()
    empty_view = LogProbs(policy=batch.empty_policy, reference=batch.empty_reference)
    torch.testing.assert_close(get_loss("bvpo")(batch, alpha=0.0), DPO(empty_view))


def test_inpo_first_iteration_is_ipo_like():
    """With previous = reference, h_t = h and INPO is (h - 1/(2 eta))^2 (IPO without length normalisation)."""
    batch = random_pairs()
    first_round = dataclasses.replace(batch, previous=batch.reference)
    policy_margin = batch.policy[:, 0] - batch.policy[:, 1]
    h = policy_margin - (batch.reference[:, 0] - batch.reference[:, 1])
    torch.testing.assert_close(get_loss("inpo")(first_round, eta=0.05), (h - 10.0) ** 2)


def test_cdr_with_hard_labels_is_dpo():
    """As temperature -> 0, p = sigma(delta_score / T) -> 1 when the chosen scores higher."""
    batch = random_pairs()
    ordered = dataclasses.replace(batch, scores=torch.tensor([[1.0, 0.0]]).expand(batch.batch_size, 2))
    torch.testing.assert_close(get_loss("cdr")(ordered, temperature=1e-3), DPO(batch))


def flip_pairs(batch: LogProbs, flipped: torch.Tensor) -> LogProbs:
    """Swap chosen and rejected in the rows where `flipped` is True."""
    order = torch.where(flipped[:, None], torch.tensor([1, 0]), torch.tensor([0, 1]))
    return LogProbs(policy=batch.policy.gather(1, order), reference=batch.reference.gather(1, order))


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_rdpo_is_unbiased_under_random_flips(epsilon):
    """Monte Carlo: flip each label with probability eps; the mean rDPO loss over many draws matches
    the clean DPO loss, while DPO and cDPO on the noisy labels are biased (Chowdhury et al. 2024)."""
    generator = torch.Generator().manual_seed(0)
    clean = LogProbs(
        policy=torch.randn(8, 2, generator=generator, dtype=torch.float64) * 5,
        reference=torch.randn(8, 2, generator=generator, dtype=torch.float64) * 5,
    )
    draws = 40_000
    repeated = LogProbs(policy=clean.policy.repeat(draws, 1), reference=clean.reference.repeat(draws, 1))
    flipped = torch.rand(repeated.batch_size, generator=generator) < epsilon
    noisy = flip_pairs(repeated, flipped)

    def mean_over_draws(values):
        per_draw = values.view(draws, clean.batch_size)
        return per_draw.mean(0), per_draw.std(0) / draws**0.5

    target = DPO(clean, beta=1.0)
    rdpo_mean, rdpo_error = mean_over_draws(get_loss("rdpo")(noisy, beta=1.0, epsilon=epsilon))
    assert (rdpo_mean - target).abs().max() < 4 * rdpo_error.max() + 1e-3
    for biased in ("dpo", "cdpo"):
        noisy_mean, _ = mean_over_draws(get_loss(biased)(noisy, beta=1.0, **({"epsilon": epsilon} if biased == "cdpo" else {})))
        assert (noisy_mean - target).abs().max() > 10 * rdpo_error.max()
