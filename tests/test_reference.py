"""pi_ref has one resolver (`prefopt.training.reference.Reference`): the trainer, the round loop, the sampling
callbacks, TR-DPO's refresh and CDR's density ratio all ask it which model is the reference."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from peft import LoraConfig, get_peft_model

from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.chat import as_response
from prefopt.logprobs import score
from prefopt.training.reference import Reference, mix_into

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _trainer(tmp_path, model, *, loss="dpo", **options):
    args = PrefOptConfig(loss=loss, **config_kwargs(tmp_path, **options.pop("settings", {})))
    return Trainer(model, args=args, train_dataset=pair_dataset(4), processing_class=make_tokenizer(), **options)


def test_resolve_names_each_kind():
    plain, separate = make_model(), make_model(1)
    assert Reference.resolve(plain, separate).kind == "model"
    assert Reference.resolve(plain).kind == "initial"
    assert Reference.resolve(plain, needs_reference=False).kind == "none"
    fresh = get_peft_model(make_model(), LoraConfig(**LORA))
    assert Reference.resolve(fresh).kind == "base"
    fresh.add_adapter("ref", LoraConfig(**LORA))
    assert Reference.resolve(fresh).kind == "ref_adapter"
    with pytest.raises(ValueError, match="not a PEFT model"):
        Reference.base_of(plain)
    with pytest.raises(ValueError, match="no reference model"):
        with Reference("none", policy=plain).active():
            pass


@pytest.mark.parametrize(
    "case, expected",
    [
        ("in-memory model", "model"),  # a frozen copy of the initial model
        ("peft_config", "base"),  # a fresh adapter: the base is the initial policy
        ("pretrained adapter", "ref_adapter"),  # TRL keeps a frozen copy of the adapter, named "ref"
        ("precompute", "initial"),  # full fine-tuning, log-probs precomputed from the policy before training
        ("reference-free loss", "none"),  # the copy is freed
        ("requested base", "base"),  # the round loop: the base, not a copy of the adapter trained so far
    ],
)
def test_the_trainer_settles_one_reference_per_setting(tmp_path, case, expected):
    model, options, settings, loss = make_model(), {}, {}, "dpo"
    if case == "peft_config":
        options["peft_config"] = LoraConfig(**LORA)
    elif case in ("pretrained adapter", "requested base"):
        model = get_peft_model(model, LoraConfig(**LORA, init_lora_weights=False))
        if case == "requested base":
            options["ref_model"] = Reference.base_of(model)
    elif case == "precompute":
        settings["precompute_ref_log_probs"] = True
    elif case == "reference-free loss":
        loss = "simpo"
    trainer = _trainer(tmp_path, model, loss=loss, settings=settings, **options)
    assert trainer.reference.kind == expected
    assert (trainer.ref_model is not None) == (expected == "model")  # TRL's attribute follows
    if case == "requested base":
        assert "ref" not in trainer.model.peft_config  # the copy TRL made of the current adapter is removed
    if expected in ("base", "ref_adapter"):
        # the reference is the initial policy: with the adapter switched as the kind says, scores are the base's
        # ("base") or those of the adapter as it was when training started ("ref_adapter")
        rows = pair_dataset(2)
        with trainer.reference.active() as module:
            reference_logps = score(module, make_tokenizer(), list(rows["prompt"]), list(rows["chosen"])).logps
        if expected == "base":
            with trainer.model.disable_adapter():
                base = score(trainer.model, make_tokenizer(), list(rows["prompt"]), list(rows["chosen"])).logps
            torch.testing.assert_close(reference_logps, base)
        else:
            current = score(trainer.model, make_tokenizer(), list(rows["prompt"]), list(rows["chosen"])).logps
            torch.testing.assert_close(reference_logps, current)  # before training the adapter equals its copy


def test_density_ratio_weak_side_is_the_base_of_a_peft_strong_model():
    from prefopt.rewards import DensityRatioReward

    strong = get_peft_model(make_model(), LoraConfig(**LORA, init_lora_weights=False))
    reward = DensityRatioReward(strong, None, make_tokenizer())
    assert reward.weak_side.kind == "base"
    prompts, responses = ["say", "tell"], ["good good", "bad"]
    seen = [reward.customised_prompt(prompt) for prompt in prompts]  # as both models see them
    answers = [as_response(prompt, response) for prompt, response in zip(seen, responses)]
    with strong.disable_adapter():
        base = score(strong, make_tokenizer(), seen, answers).logps
    expected = score(strong, make_tokenizer(), seen, answers).logps - base
    torch.testing.assert_close(reward(prompts, responses), expected)


class _FakeGather:
    """A stand-in for deepspeed.zero.GatheredParameters that records what it gathers."""

    calls: list = []

    def __init__(self, parameters, modifier_rank=None):
        self.parameters, self.modifier_rank = list(parameters), modifier_rank

    def __enter__(self):
        _FakeGather.calls.append((len(self.parameters), self.modifier_rank))

    def __exit__(self, *exc):
        return False


def _zero3_accelerator(process_index: int):
    plugin = types.SimpleNamespace(zero_stage=3)
    return types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=plugin), process_index=process_index)


def test_tr_dpo_refresh_gathers_sharded_parameters_under_zero3(monkeypatch):
    """Under ZeRO-3 each process holds a shard: both models' parameters are gathered first (modifier rank 0, as
    TRL's SyncRefModelCallback), process 0 mixes, the others leave the broadcast to DeepSpeed."""
    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=_FakeGather)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    _FakeGather.calls = []
    policy, reference = make_model(0), make_model(1)
    before = [p.clone() for p in reference.parameters()]
    mix_into(reference, policy, 0.25, _zero3_accelerator(process_index=1))
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters()))  # not process 0: no change
    mix_into(reference, policy, 0.25, _zero3_accelerator(process_index=0))
    count = len(list(policy.parameters())) + len(list(reference.parameters()))
    assert _FakeGather.calls == [(count, 0), (count, 0)]
    for mixed, old, new in zip(reference.parameters(), before, policy.parameters()):
        torch.testing.assert_close(mixed, 0.75 * old + 0.25 * new)
