"""Every offline loss, in every precision users train in: the packed path's per-example losses and LoRA gradients
equal the plain path's within that precision's own plain-vs-plain spread.

The spread is the plain path against itself with every row shifted right by left padding (position ids kept):
the same computation at other offsets, which moves bfloat16 and float16 results by their rounding. The packed
result must lie within `SPREAD_FACTOR` x that spread of the plain one, floored at `FLOOR_EPS` x the dtype's
epsilon (relative to the plain values) where the spread happens to be zero. float32 and float64 are covered
at fixed tolerances in test_packing.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers_trainer import config_kwargs, make_model, make_tokenizer
from peft import LoraConfig
from prefopt.losses import get_loss, list_losses
from prefopt.training import packing_check
from test_packing import _dataset_for, _offline_servable, _per_example_losses_and_grads
from test_packing_precision import PRECISIONS, precision_model

from prefopt import PrefOptConfig, Trainer

SPREAD_FACTOR = 4.0
FLOOR_EPS = 16.0
DTYPES = {"bf16-autocast": torch.bfloat16, "bf16-weights": torch.bfloat16, "fp16-weights": torch.float16,
          "4bit": torch.bfloat16}


def assert_within_spread(packed: torch.Tensor, plain: torch.Tensor, other_plain: torch.Tensor, dtype, what: str):
    packed, plain, other_plain = packed.double(), plain.double(), other_plain.double()
    spread = (other_plain - plain).norm().item()
    floor = FLOOR_EPS * torch.finfo(dtype).eps * max(plain.norm().item(), 1e-3)
    difference = (packed - plain).norm().item()
    assert difference <= SPREAD_FACTOR * max(spread, floor), (
        f"{what}: packed - plain = {difference:.3g}, plain-vs-plain spread {spread:.3g} (floor {floor:.3g})")


def _run(trainer, inputs, prefix_sharing: bool):
    trainer.args.prefix_sharing = prefix_sharing
    with trainer.compute_loss_context_manager():
        return _per_example_losses_and_grads(trainer, inputs)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", [name for name in list_losses() if _offline_servable(name)])
def test_packed_losses_and_gradients_within_the_precisions_spread(tmp_path, name, precision):
    spec = get_loss(name)
    model, settings = precision_model(precision, make_model(), tmp_path)
    trainer = Trainer(model, train_dataset=_dataset_for(spec), processing_class=make_tokenizer(),
                      peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
                      args=PrefOptConfig(loss=name, **config_kwargs(tmp_path, **settings)))
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    packed_losses, packed_grads = _run(trainer, inputs, prefix_sharing=True)
    assert trainer.packing_fallback_reason is None, trainer.packing_fallback_reason
    assert trainer.forward.last_layout is not None
    plain_losses, plain_grads = _run(trainer, inputs, prefix_sharing=False)
    shifted_losses, shifted_grads = _run(trainer, packing_check.shifted_rows(inputs, 5), prefix_sharing=False)
    dtype = DTYPES[precision]
    for component, values in plain_losses.items():
        assert torch.isfinite(values).all(), component
        assert_within_spread(packed_losses[component], values, shifted_losses[component], dtype, f"loss {component}")
    for parameter, grad in plain_grads.items():
        assert_within_spread(packed_grads[parameter], grad, shifted_grads[parameter], dtype, f"gradient {parameter}")
