"""Ranking samples under a preference oracle: each prompt's best and worst sample.

    from prefopt.online.ranking import rank_samples
    pairs, ties = rank_samples(oracle, prompts, samples, method="knockout")   # [(prompt index, best, worst)]

An oracle is ``oracle(prompts, first, second) -> P(first > second | prompt)`` (`prefopt.online.rewards`); a
reward becomes one through `as_oracle` (Bradley-Terry). ``knockout`` plays single-elimination tournaments
(about 1.5 K oracle calls per prompt, batched over prompts); ``best_worst`` takes the argmax / argmin of the
reward, or of each sample's mean win probability against the others (a round robin) when there is no reward.
"""

from __future__ import annotations

from typing import Sequence

import torch

from prefopt.online.rewards import BradleyTerryOracle

RANKINGS = ("knockout", "best_worst")


def as_oracle(reward, oracle):
    """``oracle`` when given, else ``BradleyTerryOracle(reward)``; one of the two is needed."""
    if oracle is not None:
        return oracle
    if reward is None:
        raise ValueError("train_online needs a `reward` (turned into a Bradley-Terry oracle) or a preference `oracle`")
    return BradleyTerryOracle(reward)


def preferences(oracle, prompts: Sequence, first: Sequence, second: Sequence) -> list[float]:
    """P(first_i > second_i | prompt_i) for every i, in one oracle call."""
    if not prompts:
        return []
    probabilities = torch.as_tensor(oracle(list(prompts), list(first), list(second)), dtype=torch.float64).flatten()
    if probabilities.numel() != len(prompts):
        raise ValueError(f"the oracle returned {probabilities.numel()} probabilities for {len(prompts)} comparisons")
    if not torch.isfinite(probabilities).all() or ((probabilities < 0) | (probabilities > 1)).any():
        raise ValueError(f"the oracle must return probabilities in [0, 1], got {probabilities.tolist()}")
    return probabilities.tolist()


def _play(oracle, prompts: Sequence, samples: Sequence[Sequence], brackets: list[list[int]], keep_winner: bool) -> list[list[int]]:
    """One round of every prompt's bracket: adjacent entrants meet, the winner (or the loser) advances, an odd
    last entrant gets a bye. A probability of exactly 0.5 advances the first entrant. All prompts' matches go
    to the oracle in one call."""
    matches = [(p, bracket[i], bracket[i + 1]) for p, bracket in enumerate(brackets) for i in range(0, len(bracket) - 1, 2)]
    probabilities = preferences(
        oracle, [prompts[p] for p, _, _ in matches], [samples[p][a] for p, a, _ in matches], [samples[p][b] for p, _, b in matches]
    )
    advanced: list[list[int]] = [[] for _ in brackets]
    for (p, a, b), probability in zip(matches, probabilities):
        first_wins = probability >= 0.5
        advanced[p].append(a if first_wins == keep_winner else b)
    for p, bracket in enumerate(brackets):
        if len(bracket) % 2:
            advanced[p].append(bracket[-1])
    return advanced


def knockout_best_worst(oracle, prompts: Sequence, samples: Sequence[Sequence]) -> list[tuple[int, int]]:
    """(best, worst) sample index per prompt by knockout tournaments under ``oracle(prompts, first, second)``.

    The best is the champion of a single-elimination tournament (entrants in sample order, adjacent pairs
    meet). The worst is the last one left in a tournament in which the loser of each match advances; it shares
    the first round (its entrants are the first round's losers and the entrant with a bye). About 1.5 K oracle
    comparisons per prompt, batched over prompts: one oracle call per bracket level.
    """
    first_round = [list(range(len(responses))) for responses in samples]
    if any(len(bracket) < 2 for bracket in first_round):
        raise ValueError("knockout ranking needs at least 2 samples per prompt")
    winners = _play(oracle, prompts, samples, first_round, keep_winner=True)
    # the loser bracket shares the first round: its losers, plus the entrant with a bye (who has lost nothing yet)
    losers = [
        [i for i in bracket if i not in set(won)] + ([bracket[-1]] if len(bracket) % 2 else [])
        for bracket, won in zip(first_round, winners)
    ]
    while any(len(bracket) > 1 for bracket in winners):
        winners = _play(oracle, prompts, samples, winners, keep_winner=True)
    while any(len(bracket) > 1 for bracket in losers):
        losers = _play(oracle, prompts, samples, losers, keep_winner=False)
    return [(won[0], lost[0]) for won, lost in zip(winners, losers)]


def scored_best_worst(oracle, prompts: Sequence, samples: Sequence[Sequence], reward=None) -> list[tuple[int, int]]:
    """(best, worst) per prompt: argmax / argmin of ``reward(prompts, responses)`` when given, else of each
    sample's mean win probability against the other samples of its prompt (a round robin under ``oracle``).
    The first index wins a tie."""
    flat_prompts = [prompt for prompt, responses in zip(prompts, samples) for _ in responses]
    flat_samples = [response for responses in samples for response in responses]
    if reward is not None:
        values = torch.as_tensor(reward(flat_prompts, flat_samples), dtype=torch.float64).flatten().tolist()
        scores, start = [], 0
        for responses in samples:
            scores.append(values[start : start + len(responses)])
            start += len(responses)
    else:
        matches = [(p, a, b) for p, responses in enumerate(samples) for a in range(len(responses)) for b in range(len(responses)) if a != b]
        probabilities = preferences(
            oracle, [prompts[p] for p, _, _ in matches], [samples[p][a] for p, a, _ in matches], [samples[p][b] for p, _, b in matches]
        )
        scores = [[0.0] * len(responses) for responses in samples]
        for (p, a, _), probability in zip(matches, probabilities):
            scores[p][a] += probability / (len(samples[p]) - 1)
    pairs = []
    for values in scores:
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        worst = min(range(len(values)), key=lambda i: (values[i], i))
        pairs.append((best, worst))
    return pairs


def rank_samples(oracle, prompts: Sequence, samples: Sequence[Sequence], method: str = "knockout", reward=None):
    """``(pairs, ties)``: one (prompt index, best, worst) per prompt whose best beats its worst strictly under
    the oracle (P > 0.5), and the indices of the prompts skipped because the two tie (identical texts, or P <= 0.5)."""
    if method == "knockout":
        chosen = knockout_best_worst(oracle, prompts, samples)
    elif method == "best_worst":
        chosen = scored_best_worst(oracle, prompts, samples, reward)
    else:
        raise ValueError(f"ranking must be one of {list(RANKINGS)}, got {method!r}")
    candidates = [(p, best, worst) for p, (best, worst) in enumerate(chosen) if samples[p][best] != samples[p][worst]]
    probabilities = preferences(
        oracle, [prompts[p] for p, _, _ in candidates], [samples[p][b] for p, b, _ in candidates], [samples[p][w] for p, _, w in candidates]
    )
    pairs = [candidate for candidate, probability in zip(candidates, probabilities) if probability > 0.5]
    kept = {p for p, _, _ in pairs}
    return pairs, [p for p in range(len(samples)) if p not in kept]
