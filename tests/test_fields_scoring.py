"""Every field is scored by one routine: at step 1, with the policy equal to its reference, each provider-filled
field of every registered loss equals its policy-side twin, with and without ``ld_alpha``, for batches of 1, 2
and 3 examples.

The class this catches: a field scored by another routine than the policy (the bare log-prob function, or the
trainer's with another batch layout). With ``ld_alpha`` that made online DPO, INPO and online VPO train a
length-desensitised policy against a plain reference and plain ``previous``, BVPO's empty-trace view a plain
policy against a desensitised reference, and VPO's calibration reference borrow the lengths of other prompts'
samples (for an odd batch, a length read from uninitialised memory): margins of 2 to 14 nats at step 1.

Responses have different lengths inside each example and across examples, so LD-DPO's public length matters.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from helpers_trainer import config_kwargs, make_model, make_tokenizer
from prefopt import PrefOptConfig, Trainer
from prefopt.losses import get_loss, list_losses
from prefopt.online.rounds import round_trainer

BATCH_SIZES = (1, 2, 3)
LD_ALPHAS = (None, 0.5)
PROMPTS = ["say", "tell please", "please say say"]
CHOSEN = [" good good good", " good", " nice yes ok good"]
REJECTED = [" bad", " bad bad bad meh", " no"]
CALIBRATION = [" ok", " meh meh meh", " yes no"]
# field -> the field it must equal at step 1 (policy == reference == pi_t)
TWINS = {"reference": "policy", "previous": "policy", "calibration_reference": "calibration_policy",
         "empty_reference": "empty_policy"}


def _rows(spec) -> Dataset:
    rows = []
    for i, prompt in enumerate(PROMPTS):
        row = {"prompt": prompt, "chosen": CHOSEN[i], "rejected": REJECTED[i], "calibration": CALIBRATION[i]}
        if "scores" in spec.required_fields:
            row.update(score_chosen=1.0, score_rejected=0.0)
        if "empty_policy" in spec.required_fields:  # BVPO: the empty-trace view, other lengths again
            row.update(chosen_no_trace=REJECTED[i], rejected_no_trace=CALIBRATION[i])
        rows.append(row)
    return Dataset.from_list(rows)


def _offline_or_round_trainer(tmp_path, name: str, ld_alpha):
    """The trainer that serves loss ``name``'s fields: the offline Trainer, or the round loop's (``previous``,
    online VPO's calibration sample). The reference is a frozen copy of the policy: at step 1 they are equal."""
    spec = get_loss(name)
    policy = make_model()
    reference = copy.deepcopy(policy)
    online = "online" in spec.choices.get("mode", ())
    args = PrefOptConfig(loss=name, ld_alpha=ld_alpha, loss_kwargs={"mode": "online"} if online else None,
                         **config_kwargs(tmp_path))
    if "previous" in spec.required_fields or online:
        return round_trainer(policy, make_tokenizer(), _rows(spec), args, reference_model=reference, calibration=online)
    return Trainer(policy, ref_model=reference, args=args, train_dataset=_rows(spec), processing_class=make_tokenizer())


OFFLINE = [name for name in list_losses() if get_loss(name).responses != "single"]


@pytest.mark.parametrize("ld_alpha", LD_ALPHAS, ids=["plain", "ld_alpha"])
@pytest.mark.parametrize("name", OFFLINE)
def test_every_field_is_scored_like_the_policy(tmp_path, name, ld_alpha):
    trainer = _offline_or_round_trainer(tmp_path, name, ld_alpha)
    checked = set()
    for batch_size in BATCH_SIZES:
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)])
        with torch.no_grad():
            fields, _ = trainer.batch_fields(trainer.model, batch)
        for field, twin in TWINS.items():
            if field in fields and twin in fields:
                torch.testing.assert_close(fields[field], fields[twin], msg=lambda m: f"{field} vs {twin}, B={batch_size}: {m}")
                checked.add(field)
    needed = {field for field in TWINS if field in get_loss(name).required_fields}
    assert needed <= checked  # every provider-filled field the loss needs was compared
    if get_loss(name).needs_reference:
        assert "reference" in checked


def test_online_vpo_and_inpo_fields_are_all_compared(tmp_path):
    """The round loop fills calibration_* for online VPO and previous for INPO: both pairs are checked above."""
    vpo = _offline_or_round_trainer(tmp_path / "vpo", "vpo", 0.5)
    batch = vpo.data_collator([vpo.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        fields, _ = vpo.batch_fields(vpo.model, batch)
    assert {"calibration_policy", "calibration_reference"} <= set(fields)
    inpo = _offline_or_round_trainer(tmp_path / "inpo", "inpo", 0.5)
    assert "previous" in inpo.batch_fields(inpo.model, inpo.data_collator([inpo.train_dataset[0]]))[0]


def test_ld_alpha_changes_the_sums_of_unequal_responses(tmp_path):
    """The check above is not vacuous: LD-DPO does move the sequence log-probs of these rows."""
    trainer = _offline_or_round_trainer(tmp_path, "dpo", None)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        plain, _ = trainer.batch_fields(trainer.model, batch)
        trainer.args.ld_alpha = 0.5
        desensitised, _ = trainer.batch_fields(trainer.model, batch)
    assert (plain["policy"] - desensitised["policy"]).abs().max() > 0.5


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_fdpg_samples_are_scored_like_the_policy(tmp_path, batch_size, monkeypatch):
    """f-DPG at step 1: q = pi_theta and P = pi_ref (a constraint every sample satisfies), so proposal, target and
    the reference all equal the policy's log-probs; ld_alpha, a pairwise notion, is refused."""
    from prefopt.losses import LogProbs
    from prefopt.methods.fdpg import trainer as fdpg_trainer
    from prefopt.online import FDPGTrainer

    args = PrefOptConfig(loss="fdpg", **config_kwargs(tmp_path, per_device_train_batch_size=batch_size, max_steps=1))
    trainer = FDPGTrainer(make_model(), make_tokenizer(), PROMPTS, target="constraint", constraint=lambda p, r: True,
                          samples_per_prompt=2, max_new_tokens=4, args=args)
    seen = {}

    def recording(**fields):
        seen.update((name, value.detach()) for name, value in fields.items())
        return LogProbs(**fields)

    monkeypatch.setattr(fdpg_trainer, "LogProbs", recording)
    trainer.train()
    torch.testing.assert_close(seen["proposal"], seen["policy"])
    torch.testing.assert_close(seen["target"], seen["policy"])
    with pytest.raises(ValueError, match="ld_alpha"):
        FDPGTrainer(make_model(), make_tokenizer(), PROMPTS, target="constraint", constraint=lambda p, r: True,
                    args=PrefOptConfig(loss="fdpg", ld_alpha=0.5, **config_kwargs(tmp_path)))
