"""Packed forward passes: each prompt encoded once for all its responses, and batches without padding.

The collator lays a batch out as TRL does: one row per response, ``prompt + response``, padded to the
longest row (``input_ids``, ``attention_mask``, ``completion_mask`` [N, L], ``response_index`` [B, K]).
A pair therefore encodes its prompt twice, a K-wise ranking K times. `build_layout` rewrites such a
batch into packed rows

    [prompt_1, response_1a, response_1b, ..., prompt_2, response_2a, ...]

with a 4D attention mask in which every response attends to its own prompt and causally to itself,
never to a sibling response or to another example, and position ids that restart with each prompt and
continue from the prompt's end in each response. The hidden state of a response token is then exactly
the one of the unpacked row ``prompt + response`` (same tokens visible, same positions), so the
per-response log-prob sums are equal up to floating-point summation order.

Two independent switches (``PrefOptConfig.prefix_sharing``, ``PrefOptConfig.padding_free``):
  * prefix sharing: responses whose (possibly truncated) prompt tokens are identical share one copy;
    responses whose prompts differ after truncation keep their own copy, so truncation never changes
    what a token sees. Sharing saves the prompt's repeats but makes one row of prompt + K responses,
    whose attention (a dense masked [T, T] product for eager and sdpa) grows with the square of its
    length: with long responses after a short prompt (64/512) that costs more than the tokens saved. Given
    the model's `attention_cost`, a batch (without padding-free) is laid out shared only where its estimated
    cost, rows x width x (1 + attention_cost x width), is lower than with one row per response (TRL's rows,
    still scored by the response-only LM head below);
  * padding-free: all examples of the batch go into one row (no padding at all) instead of one row
    per example padded to the longest.

`packed_forward` runs the model's backbone on the packed rows and scores only the response tokens
with TRL's chunked log-prob kernel (`trl.kernels.ChunkedLogProbFunction`): no full-vocabulary logits
in memory and no LM-head work on prompt tokens (TRL's fused head scores every position on devices
without Triton, e.g. CPU). The per-token results are scattered back to TRL's [N, L-1] layout, so the
trainer's log-prob sums and metrics read them unchanged.

Whether a model can take the custom mask is decided by `unsupported_reason` (static checks) and, once
per model and mask kind (block mask, or `PackedLayout.one_sequence_per_row`), by `prefopt.training.packing_check`
on a real batch (exact in float32, against the plain path's own noise in lower precision); where either
fails the trainer logs the reason and uses the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel
from trl.kernels import ChunkedLogProbFunction

from prefopt.logprobs import token_logps

# Attention implementations that apply a caller-given 4D mask as is. FlashAttention kernels take no
# arbitrary mask (they would silently let responses see each other), so they are refused.
MASKABLE_ATTENTION = ("eager", "sdpa")
# Vocabulary columns per LM-head tile (TRL's value for its fused head).
VOCAB_CHUNK_SIZE = 32768
# Per-token outputs the trainer's metrics read besides the log-probs.
METRIC_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
# Config attributes that rescale logits (TRL's fused head reads them; this path does not).
_LOGIT_SCALE_ATTRIBUTES = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


@dataclass
class PackedLayout:
    """Packed rows of a batch and where each scored response token sits in them.

    input_ids, position_ids [R, T]; group_ids [R, T]: the prompt group (a prompt and the responses sharing it)
    of each token, unique negative values on padding; segment_ids [R, T]: 0 on prompt tokens, a distinct id
    per response. source_positions [M]: flat index (row * T + column) of the hidden state that predicts each
    scored token; target_ids [M]: the scored tokens; plain_positions [M]: their flat index in the plain
    [N, L-1] shifted layout.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    group_ids: torch.Tensor
    segment_ids: torch.Tensor
    source_positions: torch.Tensor
    target_ids: torch.Tensor
    plain_positions: torch.Tensor
    plain_shape: tuple[int, int]
    # every row is one prompt + one response (nothing shared, nothing packed beside it): the model's own causal
    # mask over a 2D padding mask is then exact, and lets attention take its causal fast path
    one_sequence_per_row: bool = False

    @property
    def num_tokens(self) -> int:
        """Tokens the packed forward processes (padding included)."""
        return self.input_ids.numel()

    def attention_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[R, 1, T, T] bool, True = may attend: earlier tokens of the same prompt group that are the prompt
        or the same response. Built on ``device`` from the [R, T] ids (cheap next to the forward)."""
        groups, segments = self.group_ids.to(device), self.segment_ids.to(device)
        width = groups.size(1)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        same_group = groups[:, :, None] == groups[:, None, :]
        visible = (segments[:, None, :] == 0) | (segments[:, :, None] == segments[:, None, :])
        return (same_group & visible & causal).unsqueeze(1)


def _split_row(input_ids, attention_mask, completion_mask, row: int) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one collated row; raises ValueError when the row is not
    right-padded ``prompt + response`` (the layout packing assumes)."""
    length = int(attention_mask[row].sum())
    if length and not bool(attention_mask[row, :length].all()):
        raise ValueError(f"row {row} is not right-padded (attention_mask has gaps)")
    ids = input_ids[row, :length].tolist()
    mask = completion_mask[row, :length].tolist()
    prompt_length = mask.index(1) if 1 in mask else length
    if not all(mask[prompt_length:]):
        raise ValueError(f"row {row}: completion_mask is not prompt tokens followed by response tokens")
    return ids[:prompt_length], ids[prompt_length:]


def build_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    response_index: torch.Tensor,
    *,
    prefix_sharing: bool = True,
    padding_free: bool = True,
    pad_token_id: int = 0,
    attention_cost: float = 0.0,
) -> PackedLayout:
    """Pack a collated batch (see the module docstring). ``attention_cost`` (`attention_cost(model)`; 0 = always
    share) decides between shared rows and one row per response. Raises ValueError for a batch not laid out
    as right-padded ``prompt + response`` rows."""
    num_rows, width = input_ids.shape
    # groups: (prompt ids, [(plain row, response ids), ...]); one list of groups per packed row
    packed_rows: list[list[tuple[list[int], list[tuple[int, list[int]]]]]] = []
    for example_rows in response_index.tolist():
        groups: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
        for row in (r for r in example_rows if r >= 0):
            prompt, response = _split_row(input_ids, attention_mask, completion_mask, row)
            shared = next((g for g in groups if g[0] == prompt), None) if prefix_sharing else None
            if shared is None:
                groups.append((prompt, [(row, response)]))
            else:
                shared[1].append((row, response))
        if padding_free and packed_rows:
            packed_rows[0].extend(groups)
        else:
            packed_rows.append(groups)
    if prefix_sharing and not padding_free and attention_cost > 0:
        one_per_response = [[(prompt, [response])] for groups in packed_rows for prompt, responses in groups for response in responses]
        if _estimated_cost(one_per_response, attention_cost) < _estimated_cost(packed_rows, attention_cost):
            packed_rows = one_per_response

    lengths = _row_lengths(packed_rows)
    total_width = max(lengths + [1])
    shape = (len(packed_rows), total_width)
    packed_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    # padding: a distinct negative group per column, so a pad token attends to itself only (no empty softmax row)
    group_ids = -1 - torch.arange(total_width).repeat(len(packed_rows), 1)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    sources, targets, plain = [], [], []
    group = segment = 0
    for packed_row, groups in enumerate(packed_rows):
        offset = 0
        for prompt, responses in groups:
            group += 1
            prompt_start, prompt_length = offset, len(prompt)
            span = slice(offset, offset + prompt_length)
            packed_ids[packed_row, span] = torch.tensor(prompt, dtype=torch.long)
            positions[packed_row, span] = torch.arange(prompt_length)
            group_ids[packed_row, span] = group
            offset += prompt_length
            for row, response in responses:
                segment += 1
                length = len(response)
                span = slice(offset, offset + length)
                response_ids = torch.tensor(response, dtype=torch.long)
                packed_ids[packed_row, span] = response_ids
                positions[packed_row, span] = torch.arange(prompt_length, prompt_length + length)
                group_ids[packed_row, span] = group
                segment_ids[packed_row, span] = segment
                # the plain path scores response token j (column prompt_length + j) from the hidden state
                # before it; a row's very first token has none and is never scored
                j = torch.arange(1 if prompt_length == 0 else 0, length)
                source = offset + j - 1
                source[j == 0] = prompt_start + prompt_length - 1
                sources.append(packed_row * total_width + source)
                targets.append(response_ids[j])
                plain.append(row * (width - 1) + prompt_length + j - 1)
                offset += length
    empty = torch.zeros(0, dtype=torch.long)
    return PackedLayout(
        input_ids=packed_ids,
        position_ids=positions,
        group_ids=group_ids,
        segment_ids=segment_ids,
        source_positions=torch.cat(sources) if sources else empty,
        target_ids=torch.cat(targets) if targets else empty,
        plain_positions=torch.cat(plain) if plain else empty,
        plain_shape=(num_rows, width - 1),
        one_sequence_per_row=all(len(groups) == 1 and len(groups[0][1]) == 1 for groups in packed_rows),
    )


def _row_lengths(packed_rows) -> list[int]:
    return [sum(len(prompt) + sum(len(r) for _, r in responses) for prompt, responses in groups) for groups in packed_rows]


def _estimated_cost(packed_rows, attention_cost: float) -> float:
    """Forward cost of a layout in token-equivalents: every padded position goes through the linear layers
    (1 each) and attends to every position of its row (``attention_cost`` each; the mask does not skip work)."""
    width = max(_row_lengths(packed_rows) + [1])
    return len(packed_rows) * width * (1.0 + attention_cost * width)


def attention_cost(model) -> float:
    """The FLOPs of one attended (query, key) pair relative to one token through the backbone's linear layers:
    4 x layers x attention width (QK^T and AV) over 2 x the linear layers' weights (in x out, so 4-bit packing
    does not change it; a LoRA adapter's own small Linear layers count too). The LM head is left out: the packed
    path scores the same response tokens in every layout."""
    causal_lm = _causal_lm(model)
    config = causal_lm.config.get_text_config()
    heads = getattr(config, "num_attention_heads", None)
    layers = getattr(config, "num_hidden_layers", None)
    if not heads or not layers:
        return 0.0  # unknown shape: always share
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    weights = sum(module.in_features * module.out_features for module in causal_lm.base_model.modules()
                  if isinstance(module, torch.nn.Linear))
    return 4.0 * layers * heads * head_dim / (2.0 * weights) if weights else 0.0


def _causal_lm(model) -> PreTrainedModel:
    return model.get_base_model() if is_peft_model(model) else model


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot run `packed_forward`, or None when it can (static checks only)."""
    if is_peft_model(model) and model.active_peft_config.is_prompt_learning:
        return "prompt-learning PEFT prepends virtual tokens to every row"
    causal_lm = _causal_lm(model)
    if not isinstance(causal_lm, PreTrainedModel):
        return f"{type(model).__name__} is not a transformers model (e.g. wrapped for distributed training)"
    attention = getattr(causal_lm.config, "_attn_implementation", None)
    if attention not in MASKABLE_ATTENTION:
        return f"attention implementation {attention!r} takes no custom 4D mask (supported: {MASKABLE_ATTENTION})"
    text_config = causal_lm.config.get_text_config()
    scaled = [name for name in _LOGIT_SCALE_ATTRIBUTES if getattr(text_config, name, None) not in (None, 1.0)]
    if scaled:
        return f"the model rescales its logits ({', '.join(scaled)})"
    head = causal_lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return f"the LM head is a {type(head).__name__}, not a plain Linear (e.g. an adapter on lm_head)"
    if causal_lm.base_model is causal_lm:
        return "the model exposes no separate backbone (base_model_prefix)"
    return None


def packed_forward(model, layout: PackedLayout, outputs: tuple[str, ...] = METRIC_OUTPUTS) -> SimpleNamespace:
    """Run ``model`` on the packed rows; per-token ``log_probs`` (and ``outputs``) in the plain [N, L-1] layout.

    Tokens outside the responses are 0, as in TRL's fused head; ``aux_loss`` is None."""
    causal_lm = _causal_lm(model)
    head = causal_lm.get_output_embeddings()
    device = head.weight.device
    dtype = next(p.dtype for p in causal_lm.parameters() if p.dtype.is_floating_point)
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    if layout.one_sequence_per_row:  # padding has negative group ids
        attention_mask = (layout.group_ids > 0).to(device=device, dtype=torch.long)
    else:
        attention_mask = _additive_mask(layout.attention_mask(device), dtype)
    hidden = causal_lm.base_model(
        input_ids=layout.input_ids.to(device),
        position_ids=layout.position_ids.to(device),
        attention_mask=attention_mask,
        use_cache=False,
    ).last_hidden_state
    scored = hidden.reshape(-1, hidden.size(-1))[layout.source_positions.to(device)]
    softcap = getattr(causal_lm.config.get_text_config(), "final_logit_softcapping", None)
    per_token = ChunkedLogProbFunction.apply(
        scored, head.weight, head.bias, layout.target_ids.to(device), 1.0, VOCAB_CHUNK_SIZE, softcap, 1.0, outputs
    )
    plain_positions = layout.plain_positions.to(device)
    result = {}
    for name, values in zip(("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"), per_token):
        if values is None:
            result[name] = None
            continue
        plain = values.new_zeros(layout.plain_shape[0] * layout.plain_shape[1])
        result[name] = plain.index_copy(0, plain_positions, values).view(layout.plain_shape)
    return SimpleNamespace(**result, aux_loss=None)


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" mask -> the additive float mask every attention implementation accepts."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def plain_forward_logps(model, inputs: dict) -> torch.Tensor:
    """Per-token log-probs [N, L-1] of the plain layout: `prefopt.logprobs.token_logps` with TRL's fused head,
    what the packed path is checked against."""
    return token_logps(model, inputs, fused_lm_head=True)[0]
