"""Is the packed layout right for this model? A check that means something in every precision.

`prefopt.training.forward.Forward` runs `verify` on the first batch of each mask kind; a reason (not None)
keeps that model on the plain path for the rest of the run, logged once.

Whether the packed layout is right is a question about the attention mask, the position ids and the LM head,
not about rounding. So it is decided where equality is meaningful:

* **structure, in float32.** A model that computes in float32 or float64 (no autocast, no quantised weights)
  is checked on itself: packed and plain per-token log-probs of the batch must agree within 1e-3 nats
  (`FULL_PRECISION_TOLERANCE`; float32 rounding moves them by ~1e-5, a response that sees its sibling by
  nats). A model trained in bfloat16 or float16, autocast or quantised is checked the same way on its float32
  *twin*: a model of the same class and configuration (attention implementation, rotary settings, window,
  every layer type) with at most `TWIN_LAYERS` layers (more where needed to hold one layer of each type) and
  random weights, built once per model, on the batch's tokens renumbered into a vocabulary of just those
  tokens. Mask, positions and head are the same code as the real model's; only the weights differ, and
  they do not decide whether a token can see its sibling.
* **the training precision, against the plain path's own noise.** In bfloat16 two correct computations of
  the same log-probs differ by up to ~0.3 nats per token on a 30-layer model (rounding, amplified layer by
  layer), so a fixed float32 tolerance refuses a correct layout. Instead the real model's packed log-probs
  are compared with its plain ones, and the difference must stay within `NOISE_FACTOR` x the spread of the
  plain path against itself with the rows shifted right by padding to the packed width (the same tokens
  at other offsets of a wider row, as packing places them): mean and max over the scored tokens, each
  floored at a few units of the precision's epsilon (`NOISE_FLOOR_EPS`) for a spread that happens to be
  zero. Measured on SmolLM2-135M at 300/150 tokens (bfloat16 weights): packed vs plain mean 0.016 / max 0.30,
  plain vs shifted plain 0.043 / 0.34, a leaking mask 0.67 / 9.0.
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

from prefopt.training import packing

FULL_PRECISION_TOLERANCE = 1e-3  # nats per scored token, float32 / float64
TWIN_LAYERS = 2
NOISE_FACTOR = 4.0
# floor of the noise spread, in units of the training dtype's epsilon: (mean, max) per scored token
NOISE_FLOOR_EPS = (4.0, 64.0)


def training_dtype(model) -> torch.dtype:
    """The precision the model computes in: the autocast dtype where autocast is on, else the lowest-precision
    floating dtype among its parameters (a 4-bit model's unquantised parameters hold its compute dtype)."""
    causal_lm = packing._causal_lm(model)
    head = causal_lm.get_output_embeddings()
    device = head.weight.device if head is not None else torch.device("cpu")
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    dtypes = {p.dtype for p in causal_lm.parameters() if p.dtype.is_floating_point}
    return min(dtypes, key=lambda d: torch.finfo(d).bits, default=torch.float32)


def is_quantized(model) -> bool:
    causal_lm = packing._causal_lm(model)
    return bool(getattr(causal_lm, "is_quantized", False) or getattr(causal_lm, "is_loaded_in_4bit", False)
                or getattr(causal_lm, "is_loaded_in_8bit", False)
                or any(not p.dtype.is_floating_point for p in causal_lm.parameters()))


def full_precision(model) -> bool:
    """True where packed and plain log-probs are comparable token by token at `FULL_PRECISION_TOLERANCE`."""
    return training_dtype(model) in (torch.float32, torch.float64) and not is_quantized(model)


def verify(model, batch: dict, layout: packing.PackedLayout, twins: dict | None = None) -> str | None:
    """Why ``layout`` must not be used for ``model``, or None when it may (module docstring). ``model`` must
    carry TRL's fused LM head; ``twins`` caches the float32 twin per model across calls. Runs without
    gradient and in eval mode (the caller's business)."""
    completion_mask = batch["completion_mask"]
    packed = packing.packed_forward(model, layout).log_probs
    plain = packing.plain_forward_logps(model, batch)
    if full_precision(model):
        return mismatch_reason(packed, plain, completion_mask)
    twins = {} if twins is None else twins
    if id(model) not in twins:
        twins[id(model)] = float32_twin(model)
    twin = twins[id(model)]
    reason = twin_mismatch_reason(twin, batch, layout)
    if reason is not None:
        return reason
    shifted = shifted_plain_logps(model, batch, layout.input_ids.size(1))
    return noise_mismatch_reason(packed, plain, shifted, completion_mask, training_dtype(model))


def mismatch_reason(packed: torch.Tensor, plain: torch.Tensor, completion_mask: torch.Tensor,
                    tolerance: float = FULL_PRECISION_TOLERANCE, where: str = "") -> str | None:
    """Why packed per-token log-probs disagree with the plain ones beyond ``tolerance`` nats, or None."""
    difference = _scored_difference(packed, plain, completion_mask)
    if difference.numel() == 0:
        return None
    worst = difference.max().item()
    if not worst <= tolerance:  # also catches NaN
        return f"packed and plain per-token log-probs{where} differ by up to {worst:.3g} nats (tolerance {tolerance})"
    return None


def noise_mismatch_reason(packed, plain, shifted, completion_mask, dtype: torch.dtype) -> str | None:
    """Why packed log-probs differ from the plain ones by more than the plain path's own spread allows, or None.

    ``shifted``: the plain path's log-probs of the same rows at other offsets (`shifted_plain_logps`)."""
    difference = _scored_difference(packed, plain, completion_mask)
    noise = _scored_difference(shifted, plain, completion_mask)
    if difference.numel() == 0:
        return None
    if not bool(torch.isfinite(noise).all()):
        return "the plain path's own spread could not be measured (non-finite log-probs with shifted rows)"
    eps = torch.finfo(dtype).eps
    allowed_mean = NOISE_FACTOR * max(noise.mean().item(), NOISE_FLOOR_EPS[0] * eps)
    allowed_max = NOISE_FACTOR * max(noise.max().item(), NOISE_FLOOR_EPS[1] * eps)
    mean, worst = difference.mean().item(), difference.max().item()
    if not (mean <= allowed_mean and worst <= allowed_max):  # also catches NaN
        return (f"in {str(dtype).removeprefix('torch.')}, packed and plain per-token log-probs differ by "
                f"{mean:.3g} nats on average and up to {worst:.3g}, beyond {NOISE_FACTOR:g}x the plain path's own "
                f"spread with shifted rows (allowed {allowed_mean:.3g} / {allowed_max:.3g})")
    return None


def _scored_difference(a: torch.Tensor, b: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    scored = completion_mask[:, 1:].bool().to(a.device)
    return (a.float() - b.float()).abs()[scored]


def shifted_plain_logps(model, batch: dict, width: int) -> torch.Tensor:
    """The plain path's per-token log-probs [N, L-1] of ``batch`` with every row moved right by left padding to
    at least ``width`` columns (16 at least), position ids kept: the same computation at other offsets."""
    extra = max(width - batch["input_ids"].size(1), 16)
    return packing.plain_forward_logps(model, shifted_rows(batch, extra))[:, extra:]


def shifted_rows(batch: dict, extra: int) -> dict:
    """``batch`` with every row moved right by ``extra`` left-padding columns, its position ids kept."""
    shifted = dict(batch)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        values = batch[key]
        shifted[key] = torch.cat([values.new_zeros(values.size(0), extra), values], dim=1)
    shifted["position_ids"] = (shifted["attention_mask"].cumsum(1) - 1).clamp(min=0)
    return shifted


# ------------------------------------------------------------------------------------------- the twin


def float32_twin(model) -> PreTrainedModel:
    """A float32 model of ``model``'s class and configuration with random weights and few layers (module
    docstring), on the LM head's device; the global random state is left as it was."""
    from trl.trainer.utils import add_fused_lm_head  # deferred: importing TRL takes seconds (start-up time)

    causal_lm = packing._causal_lm(model)
    config = copy.deepcopy(causal_lm.config)
    for name in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, name):
            delattr(config, name)
    text_config = config.get_text_config()
    layers = _twin_layers(text_config)
    layer_types = getattr(text_config, "layer_types", None)
    text_config.num_hidden_layers = layers
    if layer_types is not None:
        text_config.layer_types = list(layer_types)[:layers]
    device = causal_lm.get_output_embeddings().weight.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        twin = type(causal_lm)._from_config(config, attn_implementation=causal_lm.config._attn_implementation,
                                            dtype=torch.float32)
    twin = twin.to(device).eval().requires_grad_(False)
    add_fused_lm_head(twin)  # scored like the real model; the head is looked up per call, so resizing keeps it
    return twin


def _twin_layers(text_config) -> int:
    layers = text_config.num_hidden_layers
    layer_types = getattr(text_config, "layer_types", None)
    needed = TWIN_LAYERS
    if layer_types:  # one layer of each kind (e.g. sliding-window and full attention)
        needed = max(needed, 1 + max(list(layer_types).index(kind) for kind in set(layer_types)))
    return min(layers, needed)


def twin_mismatch_reason(twin, batch: dict, layout: packing.PackedLayout) -> str | None:
    """Packed vs plain on the float32 twin, the batch's tokens renumbered into the twin's vocabulary."""
    device = twin.get_output_embeddings().weight.device
    tokens = torch.unique(torch.cat([batch["input_ids"].reshape(-1).cpu(), layout.input_ids.reshape(-1)]))
    renumber = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long)
    renumber[tokens] = torch.arange(tokens.numel())
    _fit_vocabulary(twin, tokens.numel())
    twin_batch = {key: batch[key].to(device) for key in ("attention_mask", "completion_mask")}
    twin_batch["input_ids"] = renumber[batch["input_ids"].cpu()].to(device)
    twin_layout = copy.copy(layout)
    twin_layout.input_ids, twin_layout.target_ids = renumber[layout.input_ids], renumber[layout.target_ids]
    with torch.autocast(device.type, enabled=False):
        packed = packing.packed_forward(twin, twin_layout, outputs=("log_probs",)).log_probs
        plain = packing.plain_forward_logps(twin, twin_batch)
    return mismatch_reason(packed, plain, batch["completion_mask"], where=" of a float32 model of the same architecture")


def _fit_vocabulary(twin, size: int) -> None:
    """Give the twin exactly ``size`` token embeddings (and LM-head rows), random and seeded."""
    if twin.get_input_embeddings().num_embeddings == size:
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(size)
        twin.config.pad_token_id = None
        twin.resize_token_embeddings(size, mean_resizing=False)
