"""prefopt.training.packing: the packed forward (shared prompts, padding-free rows) gives the plain path's log-probs,
losses and gradients, and the trainer falls back to the plain path, with a reason, where it cannot.

The model is a tiny Llama in float64 with a LoRA adapter whose B matrices are non-zero (PEFT's
`init_lora_weights=False`), so gradients flow through the adapter exactly as in training. The LM head
kernel (TRL's chunked log-prob function, used by both paths) accumulates logits in float32, hence the
1e-5 tolerances rather than float64's 1e-12.
"""

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head

from helpers_trainer import config_kwargs, kwise_dataset, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.training import packing
from prefopt.training.batching import PreferenceCollator
from prefopt.logprobs import as_matrix
from prefopt.training.fields import STEP_FIELDS, ColumnField, default_providers
from prefopt.losses import LogProbs, get_loss, list_losses

VOCAB = 40
LAYOUTS = [dict(prefix_sharing=True, padding_free=False), dict(prefix_sharing=True, padding_free=True),
           dict(prefix_sharing=False, padding_free=True),
           dict(prefix_sharing=True, padding_free=False, attention_cost=1.0)]  # attention dear: one row per response


@functools.lru_cache(maxsize=None)
def _lora_model(attention: str):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=128, pad_token_id=0)
    model = LlamaForCausalLM(config).double()
    model.set_attn_implementation(attention)
    add_fused_lm_head(model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B != 0
    return get_peft_model(model, lora).double()


def _row_logps_and_grads(model, compute, weights):
    """Per-row sequence log-probs, and the gradient of sum(weights * log-probs) w.r.t. every trainable parameter."""
    model.zero_grad()
    per_token = compute()
    rows = per_token.sum(dim=1)
    (rows * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return rows.detach(), grads


def _batch(examples, max_length=None, truncation_mode="keep_start"):
    collator = PreferenceCollator(pad_token_id=0, max_length=max_length, truncation_mode=truncation_mode)
    return collator.torch_call(examples)


def test_layout_by_hand():
    """Prompt [3,4,5], responses [6,7] and [8]: one row [3,4,5,6,7,8]; positions restart after the prompt;
    8 sees the prompt and itself, not 6 or 7; 6 and 8 are both predicted by the prompt's last token."""
    batch = _batch([{"prompt_ids": [3, 4, 5], "completions_ids": [[6, 7], [8]]}])
    layout = packing.build_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  batch["response_index"])
    assert layout.input_ids.tolist() == [[3, 4, 5, 6, 7, 8]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    mask = layout.attention_mask()[0, 0].int().tolist()
    assert mask[5] == [1, 1, 1, 0, 0, 1]
    assert mask[4] == [1, 1, 1, 1, 1, 0]
    assert mask[2] == [1, 1, 1, 0, 0, 0]
    assert layout.target_ids.tolist() == [6, 7, 8]
    assert layout.source_positions.tolist() == [2, 3, 2]
    width = batch["input_ids"].size(1) - 1  # plain rows [3,4,5,6,7] and [3,4,5,8,<pad>], shifted by one
    assert layout.plain_positions.tolist() == [2, 3, width + 2]
    assert layout.num_tokens == 6  # the plain layout processes 10


def test_layout_keeps_differently_truncated_prompts_apart():
    """keep_end truncation cuts a different amount of prompt from each response's row: no sharing then."""
    batch = _batch([{"prompt_ids": [3, 4, 5, 6], "completions_ids": [[7, 8, 9], [10]]}], 5, "keep_end")
    layout = packing.build_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  batch["response_index"])
    assert layout.input_ids.tolist() == [[5, 6, 7, 8, 9, 3, 4, 5, 6, 10]]  # rows [5,6,7,8,9] and [3,4,5,6,10]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]]


def test_sharing_is_chosen_by_the_estimated_cost():
    """rows x width x (1 + c x width): prompt 1, responses 4 and 4. Shared: 1 row of 9 -> 9 (1 + 9c); one row per
    response: 2 rows of 5 -> 10 (1 + 5c). Sharing wins while 9 + 81c < 10 + 50c, i.e. c < 1/31."""
    batch = _batch([{"prompt_ids": [3], "completions_ids": [[4, 5, 6, 7], [8, 9, 10, 11]]}])
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"], batch["response_index"])
    assert packing.build_layout(*inputs, padding_free=False).input_ids.shape == (1, 9)  # no cost given: always share
    assert packing.build_layout(*inputs, padding_free=False, attention_cost=1 / 32).input_ids.shape == (1, 9)
    separate = packing.build_layout(*inputs, padding_free=False, attention_cost=1 / 30)
    assert separate.input_ids.tolist() == [[3, 4, 5, 6, 7], [3, 8, 9, 10, 11]]
    assert separate.position_ids.tolist() == [[0, 1, 2, 3, 4]] * 2
    assert separate.one_sequence_per_row  # the forward then takes a 2D padding mask (the model's causal path)
    assert packing.build_layout(*inputs, padding_free=True, attention_cost=1.0).input_ids.shape == (1, 9)  # one row anyway


def test_attention_cost_of_a_llama_by_hand():
    """hidden 32, 2 layers, 4 heads of 8, 2 kv heads, MLP 64. Linear weights per layer: q 32x32 + k 32x16 + v 32x16
    + o 32x32 + gate, up, down 3 x 32x64 = 1024 + 512 + 512 + 1024 + 6144 = 9216; 2 layers 18432.
    Cost: 4 x 2 x 32 / (2 x 18432) = 256 / 36864."""
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=64, vocab_size=VOCAB))
    plain = packing.attention_cost(model)
    assert plain == pytest.approx(256 / 36864)
    # LoRA r=4 adds r x (in + out) per adapted layer: 4 x (64 + 48 + 48 + 64 + 96 + 96 + 96) = 2048, x 2 layers
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert packing.attention_cost(lora) == pytest.approx(256 / (2 * (18432 + 4096)))


def test_layout_refuses_left_padded_rows():
    batch = _batch([{"prompt_ids": [3, 4], "completions_ids": [[5], [6, 7]]}])
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        packing.build_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                             batch["response_index"])


examples_strategy = st.lists(
    st.fixed_dictionaries({
        "prompt_ids": st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=7),
        "completions_ids": st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=0, max_size=5), min_size=1, max_size=4),
    }),
    min_size=1, max_size=3,
)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(examples=examples_strategy, truncation=st.sampled_from([None, (6, "keep_start"), (6, "keep_end")]),
       layout_index=st.integers(0, len(LAYOUTS) - 1), data=st.data())
def test_packed_equals_plain_logps_and_gradients(attention, examples, truncation, layout_index, data):
    """Any batch (K from 1 to 4 per example, empty responses, truncation that cuts prompts or responses):
    the same per-row log-probs and the same LoRA gradients as the plain padded layout."""
    model = _lora_model(attention)
    max_length, mode = truncation or (None, "keep_start")
    batch = _batch(examples, max_length, mode)
    layout = packing.build_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  batch["response_index"], **LAYOUTS[layout_index])
    weights = torch.tensor(data.draw(st.lists(st.floats(-2, 2), min_size=len(batch["input_ids"]),
                                              max_size=len(batch["input_ids"]))), dtype=torch.float64)
    packed, packed_grads = _row_logps_and_grads(model, lambda: packing.packed_forward(model, layout).log_probs, weights)
    plain, plain_grads = _row_logps_and_grads(model, lambda: packing.plain_forward_logps(model, batch), weights)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_packed_metrics_outputs_match_the_fused_head():
    """entropy, mean logits and top-1 hits (the trainer's metrics) come back in the plain layout."""
    model = _lora_model("sdpa")
    batch = _batch([{"prompt_ids": [3, 4, 5], "completions_ids": [[6, 7], [8, 9, 10]]}])
    layout = packing.build_layout(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                  batch["response_index"])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                      fused_lm_head=True)
        packed = packing.packed_forward(model, layout)
    scored = batch["completion_mask"][:, 1:].bool()
    for name in ("log_probs", "entropy", "mean_logits"):
        plain_values = getattr(plain, name)
        if plain_values is None:
            continue  # the head of this model was patched for log-probs only
        torch.testing.assert_close(getattr(packed, name)[scored], plain_values[scored], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------- trainer


def _offline_servable(name) -> bool:
    spec = get_loss(name)
    # fields the step computes, and those the default providers read from dataset columns (or the reference)
    offline = set(STEP_FIELDS) | {p.fields[0] for p in default_providers() if isinstance(p, ColumnField)}
    return spec.responses != "single" and all(f in offline for f in spec.required_fields)


def _dataset_for(spec):
    dataset = kwise_dataset(4) if spec.kwise else pair_dataset(4)
    if "scores" in spec.required_fields:
        if spec.kwise:
            dataset = dataset.map(lambda row: {"scores": [1.0, 0.5, 0.0, -1.0][: len(row["completions"])]})
        else:
            dataset = dataset.map(lambda row: {"score_chosen": 1.0, "score_rejected": -1.0})
    if "previous" in spec.required_fields:
        if spec.kwise:
            dataset = dataset.map(lambda row: {"previous_logps": [-3.0] * len(row["completions"])})
        else:
            dataset = dataset.map(lambda row: {"previous_chosen_logps": -3.0, "previous_rejected_logps": -4.0})
    return dataset


def _per_example_losses_and_grads(trainer, inputs):
    """What the training step computes: per-example loss of every component, and the gradient of the total."""
    model = trainer.model
    model.zero_grad()
    policy = trainer.forward.score(model, inputs, outputs=trainer.forward.metric_outputs).logps
    fields = {"policy": as_matrix(policy, inputs["response_index"]),
              "lengths": as_matrix(inputs["completion_mask"].sum(1), inputs["response_index"])}
    if trainer.kwise_data:
        fields["mask"] = inputs["response_index"] >= 0
    if trainer.preference_loss.needs_reference:
        fields["reference"] = as_matrix(trainer.reference_logps(inputs), inputs["response_index"])
    for field in trainer.preference_loss.required_fields:
        fields.setdefault(field, inputs.get(f"field_{field}"))
    per_example = trainer.preference_loss.components_per_example(
        LogProbs(**fields), per_loss=trainer.step_hyperparameters())
    total = trainer.compute_loss(model, inputs)
    total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return {name: values.detach() for name, values in per_example.items()}, grads


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in list_losses() if _offline_servable(name)])
def test_trainer_losses_and_gradients_equal_with_and_without_packing(tmp_path, name):
    """Every loss the offline trainer serves: per-example losses and LoRA gradients of one training batch
    (pairs, or rankings with K = 3 and 4 mixed) are the same packed and plain."""
    spec = get_loss(name)
    model = make_model().double()
    trainer = Trainer(model, train_dataset=_dataset_for(spec), processing_class=make_tokenizer(),
                      peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
                      args=PrefOptConfig(loss=name, **config_kwargs(tmp_path)))
    trainer.model.double()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    results = {}
    for layout in ({"prefix_sharing": False, "padding_free": False}, *LAYOUTS):
        trainer.args.prefix_sharing, trainer.args.padding_free = layout["prefix_sharing"], layout["padding_free"]
        results[tuple(layout.values())] = _per_example_losses_and_grads(trainer, inputs)
        assert trainer.packing_fallback_reason is None, trainer.packing_fallback_reason
    plain_losses, plain_grads = results[(False, False)]
    for key, (losses, grads) in results.items():
        for component, values in plain_losses.items():
            torch.testing.assert_close(losses[component], values, rtol=1e-5, atol=1e-6)
        for parameter, grad in plain_grads.items():
            torch.testing.assert_close(grads[parameter], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{key} {parameter}: {m}")


def _trainer(tmp_path, model=None, **overrides):
    return Trainer(model or make_model(), train_dataset=kwise_dataset(4), processing_class=make_tokenizer(),
                   args=PrefOptConfig(loss="plackett_luce", **config_kwargs(tmp_path, **overrides)))


def test_config_defaults_and_switch_off(tmp_path):
    args = PrefOptConfig(**config_kwargs(tmp_path))
    assert args.prefix_sharing is True and args.padding_free is False
    trainer = _trainer(tmp_path, prefix_sharing=False)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.compute_loss(trainer.model, inputs)
    assert trainer.forward.last_layout is None  # switched off: the plain layout


def test_unsupported_attention_falls_back_with_a_reason(tmp_path, caplog, monkeypatch):
    """An attention implementation outside MASKABLE_ATTENTION (FlashAttention takes no custom mask) is
    refused up front; here sdpa is declared unmaskable, since FlashAttention is not installed on CPU."""
    monkeypatch.setattr(packing, "MASKABLE_ATTENTION", ("eager",))
    trainer = _trainer(tmp_path)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with caplog.at_level("WARNING"):
        loss = trainer.compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss)
    assert "attention implementation 'sdpa'" in trainer.packing_fallback_reason
    assert "plain (unpacked) forward" in caplog.text


def test_a_model_that_ignores_the_mask_is_caught_by_the_first_batch_check(tmp_path, monkeypatch, caplog):
    """A model whose attention ignored the block mask would let responses see their siblings: here the
    mask itself is made all-visible, and the one-time comparison with the plain path refuses packing."""
    original = packing.build_layout

    def leaky_layout(*args, **kwargs):
        layout = original(*args, **kwargs)
        layout.segment_ids = torch.zeros_like(layout.segment_ids)  # every token visible like a prompt token
        return layout

    monkeypatch.setattr(packing, "build_layout", leaky_layout)
    trainer = _trainer(tmp_path)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with caplog.at_level("WARNING"):
        trainer.compute_loss(trainer.model, inputs)
    assert "differ by up to" in trainer.packing_fallback_reason
    trainer.compute_loss(trainer.model, inputs)  # the verdict is remembered: no second check
    assert "differ by up to" in trainer.packing_fallback_reason


def test_each_mask_kind_is_verified_on_its_first_batch(tmp_path, monkeypatch):
    """A batch laid out one sequence per row (2D mask) verifies nothing about the block mask of a shared row:
    the first shared batch is checked again, and a model whose block mask leaks is caught there."""
    original = packing.build_layout
    calls = []

    def first_unshared_then_leaky_shared(*args, **kwargs):
        calls.append(len(calls))
        kwargs["attention_cost"] = 1e3 if len(calls) == 1 else 0.0  # attention dear, then free
        layout = original(*args, **kwargs)
        layout.segment_ids = torch.zeros_like(layout.segment_ids)  # a block mask would let siblings see each other
        return layout

    monkeypatch.setattr(packing, "build_layout", first_unshared_then_leaky_shared)
    trainer = _trainer(tmp_path)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.compute_loss(trainer.model, inputs)
    assert trainer.packing_fallback_reason is None and trainer.forward.last_layout.one_sequence_per_row
    trainer.compute_loss(trainer.model, dict(inputs, input_ids=inputs["input_ids"].clone()))  # a new batch: shared
    assert "differ by up to" in trainer.packing_fallback_reason
    trainer.compute_loss(trainer.model, dict(inputs, input_ids=inputs["input_ids"].clone()))
    assert "differ by up to" in trainer.packing_fallback_reason  # the model stays on the plain path
    assert len(calls) == 2


def test_training_with_packing_matches_training_without(tmp_path):
    """Three optimizer steps on rankings, packed and plain, from the same start: the same logged losses."""
    logs = {}
    for sharing in (True, False):
        trainer = _trainer(tmp_path / str(sharing), model=make_model(seed=1).double(), prefix_sharing=sharing)
        trainer.train()
        logs[sharing] = [log["loss/plackett_luce"] for log in trainer.state.log_history if "loss/plackett_luce" in log]
    assert logs[True] == pytest.approx(logs[False], rel=1e-5)


def test_precomputed_reference_uses_the_packed_layout_and_the_cache(tmp_path):
    tables = {}
    for sharing in (True, False):
        trainer = Trainer(make_model().double(), train_dataset=pair_dataset(8), processing_class=make_tokenizer(),
                          args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / str(sharing), prefix_sharing=sharing,
                                                                         precompute_ref_log_probs=True)))
        tables[sharing] = torch.tensor([trainer.train_dataset["ref_chosen_logps"], trainer.train_dataset["ref_rejected_logps"]])
        assert trainer.reference_cache.misses == 1
    torch.testing.assert_close(tables[True], tables[False], rtol=1e-5, atol=1e-5)
    again = Trainer(make_model().double(), train_dataset=pair_dataset(8), processing_class=make_tokenizer(),
                    args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "True", precompute_ref_log_probs=True)))
    assert again.reference_cache.hits == 1
