"""Per-token building blocks that turn a model's token log-probs into `LogProbs` fields.

Both act on the layout every trainer forward produces: ``per_token_logps [N, T]`` (log-prob of token
t + 1 given the tokens up to t), ``completion_mask [N, T]`` (1 on response tokens, already shifted
like the log-probs) and ``response_index [B, K]`` (row of response k of example b, -1 for padding).

* `length_desensitized_logps` -- LD-DPO. Paper: Liu et al. (2024). "Length Desensitization in
  Directed Preference Optimization". arXiv:2409.06411, Eq. 12: the log-prob of a response is its
  first ``l_p`` tokens' log-probs plus ``alpha`` times the rest, l_p = the shortest response length of
  the example ("the public length"). Same as TRL 1.16's ``ld_alpha`` for pairs; for K responses the
  public length is the shortest of the K.
* `wpo_weights` -- WPO. Paper: Zhou et al. (2024). "WPO: Enhancing RLHF with Weighted Preference
  Optimization". arXiv:2406.11827, Eq. 2 with the aligned (sampling-normalised) probabilities: weight
  = exp(mean over response tokens of [log p(y_t) - log sum_v p(v)^2]), no gradient. Same as TRL
  1.16's ``use_weighting``; an example's loss is multiplied by the product of its responses' weights.
"""

from __future__ import annotations

import torch


def _per_example_min(values: torch.Tensor, response_index: torch.Tensor) -> torch.Tensor:
    """For every row, the minimum of ``values`` over the rows of the same example."""
    real = response_index >= 0
    per_response = values[response_index.clamp(min=0)].masked_fill(~real, torch.iinfo(values.dtype).max)
    per_example = per_response.min(dim=1).values  # [B]
    row_example = torch.empty_like(values)
    row_example[response_index[real]] = torch.nonzero(real)[:, 0]
    return per_example[row_example]


def length_desensitized_logps(
    per_token_logps: torch.Tensor, completion_mask: torch.Tensor, response_index: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Sequence log-probs [N]: shared-length tokens at weight 1, the tail at weight ``alpha`` (LD-DPO Eq. 12)."""
    positions = completion_mask.cumsum(dim=1)  # 1-based index of each response token
    lengths = completion_mask.sum(dim=1).long()
    shared = _per_example_min(lengths, response_index).unsqueeze(1)
    shared_mask = (positions > 0) & (positions <= shared) & completion_mask.bool()
    tail_mask = (positions > shared) & completion_mask.bool()
    shared_logps = (per_token_logps * shared_mask).sum(dim=1)
    tail_logps = (per_token_logps * tail_mask).sum(dim=1)
    return shared_logps + alpha * tail_logps  # Eq. 12 of Liu et al. 2024


def wpo_weights(per_token_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Per-row weights [N] = exp(mean response-token log p_aligned), computed without gradient (WPO Eq. 2)."""
    with torch.no_grad():
        aligned = (per_token_logps - log_sum_sq_probs) * completion_mask
        return torch.exp(aligned.sum(dim=1) / completion_mask.sum(dim=1).clamp_min(1))  # Eq. 2 of Zhou et al. 2024
