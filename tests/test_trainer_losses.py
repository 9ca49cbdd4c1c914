"""Every registered loss the offline Trainer can serve trains on a learnable toy set, parametrized over the registry.

Toy task: after each prompt, chosen = "good good", rejected = "bad bad" (K-wise: good > ok > meh > bad).
A loss "moves the right way" when, after a few steps at a high learning rate, the policy prefers the
chosen response more than at the start: the log-prob margin logps/chosen - logps/rejected grew.
(Reward margins are not comparable across losses, e.g. reference-free ones; log-prob margins are.)
Losses trained on one on-policy sample per prompt (f-DPG) train with `FDPGTrainer` towards a constraint instead.
Losses that need fields an offline preference dataset cannot provide are skipped with the reason.
"""

import pytest
import torch

from helpers_trainer import config_kwargs, kwise_dataset, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.training.fields import ColumnField, Unavailable, resolve_providers
from prefopt.losses import LogProbs, get_loss, list_losses

# Values for the dataset columns that feed optional fields: scores favour the chosen response, and the
# previous iterate's log-probs equal the reference's at iteration 1 (filled in below from the reference).
_COLUMN_VALUES = {"score_chosen": 1.0, "score_rejected": -1.0, "scores": [1.0, 0.5, 0.0, -1.0],
                  # BVPO's empty-trace view: answers generated with reasoning off (the provider adds the empty block)
                  "chosen_no_trace": " good good", "rejected_no_trace": " bad bad"}


def _dataset_for(spec):
    providers = resolve_providers()
    unavailable = [field for field in spec.required_fields if isinstance(providers.get(field), Unavailable)]
    if unavailable:
        pytest.skip(f"{spec.name}: needs {unavailable} ({providers[unavailable[0]].source}), online only")
    dataset = kwise_dataset(8) if spec.kwise else pair_dataset(8)
    for field in spec.required_fields:
        provider = providers.get(field)
        if type(provider) is ColumnField and field != "previous":
            for column in (provider.kwise,) if spec.kwise else provider.pair:
                value = _COLUMN_VALUES[column]
                dataset = dataset.map(lambda row, c=column, v=value: {c: v[: len(row["completions"])] if isinstance(v, list) else v})
        elif provider is not None:
            for column in provider.columns():
                if column not in dataset.column_names and column in _COLUMN_VALUES:
                    dataset = dataset.add_column(column, [_COLUMN_VALUES[column]] * len(dataset))
    return dataset


def _prefers_a_larger_margin_at_the_reference(spec) -> bool:
    """Whether, at policy = reference (where training starts), raising the chosen log-prob relative to the
    others lowers the loss. DiscoPOP at tau = 0.05 is a published exception: near h = 0 its loss rises
    with the margin, so from a fresh reference it first pushes the margin down."""
    k = 2 if not spec.kwise else 3
    zeros = torch.zeros(1, k)
    policy = torch.zeros(1, k, requires_grad=True)
    batch = LogProbs(policy=policy, reference=zeros, previous=zeros, lengths=torch.full((1, k), 2),
                     scores=torch.linspace(1, -1, k).unsqueeze(0), empty_policy=zeros, empty_reference=zeros)
    spec(batch).sum().backward()
    return bool(policy.grad[0, 0] < policy.grad[0, 1:].mean())


def _first_token_probability(model, tokenizer, prompt, word) -> float:
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits, -1)[tokenizer.convert_tokens_to_ids(word)].item()


def _train_on_policy(tmp_path, name):
    """One on-policy sample per prompt (f-DPG): the target is pi_ref restricted to responses opening with "good"
    (GDC), so training must raise the policy's probability of "good" as the first word (computed exactly)."""
    from prefopt.online import FDPGTrainer

    tokenizer = make_tokenizer()
    tokenizer.eos_token = "<|im_end|>"
    prompt = [{"role": "user", "content": "say"}]
    trainer = FDPGTrainer(make_model(), tokenizer, [prompt] * 8, target="constraint", samples_per_prompt=4, max_new_tokens=2,
                          constraint=lambda p, response: response.split()[:1] == ["good"],
                          args=PrefOptConfig(loss=name, **config_kwargs(tmp_path, max_steps=8, learning_rate=1e-2)))
    before = _first_token_probability(trainer.model, tokenizer, prompt, "good")
    trainer.train()
    after = _first_token_probability(trainer.model.eval(), tokenizer, prompt, "good")
    assert after > before + 0.05, f"{name}: P(first word 'good') went {before:.3f} -> {after:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list_losses())
def test_loss_trains_the_right_way(tmp_path, name):
    spec = get_loss(name)
    if spec.responses == "single":
        return _train_on_policy(tmp_path, name)
    dataset = _dataset_for(spec)
    if "previous" in spec.required_fields:
        # iteration 1: pi_t = pi_ref; store the reference's log-probs as the previous iterate's
        probe = Trainer(make_model(), train_dataset=dataset, processing_class=make_tokenizer(),
                        args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "probe", precompute_ref_log_probs=True)))
        chosen, rejected = probe.train_dataset["ref_chosen_logps"], probe.train_dataset["ref_rejected_logps"]
        dataset = dataset.add_column("previous_chosen_logps", chosen).add_column("previous_rejected_logps", rejected)
    trainer = Trainer(make_model(), train_dataset=dataset, processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss=name, **config_kwargs(tmp_path, max_steps=6, learning_rate=5e-3)))
    trainer.train()
    logs = [log for log in trainer.state.log_history if "logps/chosen" in log]
    losses = [log[f"loss/{name}"] for log in logs]
    margins = [log["logps/chosen"] - log["logps/rejected"] for log in logs]
    assert losses[-1] < losses[0], f"{name}: loss went {losses[0]:.4f} -> {losses[-1]:.4f}"
    if _prefers_a_larger_margin_at_the_reference(spec):
        assert margins[-1] > margins[0], f"{name}: log-prob margin went {margins[0]:.3f} -> {margins[-1]:.3f}"
    else:
        assert margins[-1] < margins[0], f"{name}: its own gradient points to a smaller margin at the start"
