"""`prefopt.Trainer` accepts what `trl.DPOTrainer` accepts and gives the same results ("change one import").

Each test stands for a class of failure found by running TRL's own DPO trainer tests against
prefopt.Trainer (README, "Drop-in compatibility"): models and references given by name or folder,
`model_init_kwargs`, TRL's loss modifiers (`ld_alpha`, `use_weighting`, `f_divergence_type`), TRL's
error wording, dataset types (IterableDataset, dicts of eval datasets). The tiny model is saved to a
temporary folder so that "a name" is a real local path; no Hub access.
"""

import pytest
import torch
from datasets import Dataset
from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from trl import DPOConfig, DPOTrainer

from prefopt import PrefOptConfig, Trainer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    make_model(seed=0).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def trl_args(tmp_path, **overrides):
    """A plain trl.DPOConfig, as a TRL user writes it (prefopt-only fields dropped)."""
    settings = config_kwargs(tmp_path, **overrides)
    settings.pop("ref_logps_cache_dir")
    return DPOConfig(**settings)


def varied_pairs(num_rows=8):
    """Pairs whose chosen and rejected lengths differ (LD-DPO's tail) and vary between rows."""
    chosen = [" good good", " good", " nice good yes", " ok"]
    rejected = [" bad", " bad bad meh", " no", " meh meh meh meh"]
    return Dataset.from_dict(
        {
            "prompt": ["say", "tell", "please say", "say please"] * (num_rows // 4),
            "chosen": chosen * (num_rows // 4),
            "rejected": rejected * (num_rows // 4),
        }
    )


def test_model_given_by_folder_trains(model_folder, tmp_path):
    """The constructor crashed on a str model (`is_peft_model` on the string); TRL loads it by name."""
    trainer = Trainer(model=model_folder, args=trl_args(tmp_path, max_steps=1), train_dataset=pair_dataset())
    before = {name: p.clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.ref_model is not None  # loaded by TRL from the same folder, frozen
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(before[name], p)]
    assert changed
    for name, p in trainer.ref_model.named_parameters():
        torch.testing.assert_close(p, before[name])


def test_model_init_kwargs_apply_to_a_model_given_by_name(model_folder, tmp_path):
    args = trl_args(tmp_path, max_steps=1, model_init_kwargs={"dtype": torch.float16})
    trainer = Trainer(model=model_folder, args=args, train_dataset=pair_dataset())
    assert trainer.model.dtype == torch.float16
    assert trainer.ref_model.dtype == torch.float16


def test_reference_given_by_folder(model_folder, tmp_path):
    trainer = Trainer(
        model=make_model(seed=1), ref_model=model_folder, args=trl_args(tmp_path, max_steps=1),
        train_dataset=pair_dataset(), processing_class=make_tokenizer(),
    )
    reference = make_model(seed=0)
    for name, p in trainer.ref_model.named_parameters():
        torch.testing.assert_close(p, reference.get_parameter(name))


@pytest.mark.parametrize(
    "modifier",
    [
        {},
        {"ld_alpha": 0.5},
        {"use_weighting": True},
        {"f_divergence_type": "forward_kl"},
        {"f_divergence_type": "js_divergence"},
        {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5},
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "f_divergence_type": "js_divergence"},
    ],
    ids=lambda modifier: ",".join(f"{k}={v}" for k, v in modifier.items()) or "plain",
)
def test_same_eval_loss_as_trl(model_folder, tmp_path, modifier):
    """Same folder, reference, TRL config and data: prefopt's eval loss is TRL's (modifiers were refused before).

    The reference is another random model, so the log-ratios (what the modifiers transform) are far from 0."""
    data = varied_pairs()
    losses = []
    for trainer_class in (DPOTrainer, Trainer):
        args = trl_args(tmp_path / trainer_class.__name__, **modifier)
        trainer = trainer_class(
            model=model_folder, ref_model=make_model(seed=1), args=args, train_dataset=data, eval_dataset=data
        )
        losses.append(trainer.evaluate()["eval_loss"])
    assert abs(losses[0] - 0.6931) > 1e-3  # not the trivial zero-margin value log 2
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_precompute_with_iterable_dataset_raises_trls_message(tmp_path):
    args = trl_args(tmp_path, precompute_ref_log_probs=True)
    with pytest.raises(ValueError, match="`precompute_ref_log_probs=True` is not supported with IterableDataset"):
        Trainer(
            model=make_model(), args=args, train_dataset=pair_dataset().to_iterable_dataset(),
            processing_class=make_tokenizer(),
        )


def test_iterable_train_dataset_and_dict_of_eval_datasets(tmp_path):
    trainer = Trainer(
        model=make_model(), args=trl_args(tmp_path, max_steps=1), train_dataset=pair_dataset().to_iterable_dataset(),
        eval_dataset={"first": pair_dataset(4), "second": pair_dataset(4)}, processing_class=make_tokenizer(),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_first_loss", "eval_second_loss"} <= set(metrics)
    # a dict passed straight to evaluate() is prepared per split and keyed the same way
    metrics = trainer.evaluate({"third": pair_dataset(4)})
    assert "eval_third_loss" in metrics and "eval_third_rewards/accuracies" in metrics


@pytest.mark.slow
def test_a_run_that_diverges_to_nan_returns_like_trl_but_stops_at_finite_weights(model_folder, tmp_path):
    """TRL's `test_train_model_dtype` class: float16 weights at a high learning rate diverge to NaN after a few steps
    on both trainers. TRL keeps stepping and ends with NaN parameters; its test checks only that train() returns, that
    train_loss is logged, and that the parameters changed and stayed float16. With a TRL config prefopt does all that
    too, but stops at the first non-finite step (on_nonfinite='stop'), so every parameter is finite; a prefopt config
    raises instead."""
    from prefopt.training.nonfinite import NonFiniteError

    def args():
        return trl_args(tmp_path, max_steps=6, learning_rate=100.0, model_init_kwargs={"dtype": torch.float16})

    trl_trainer = DPOTrainer(model=model_folder, args=args(), train_dataset=pair_dataset())
    trl_trainer.train()
    assert any(torch.isnan(p).any() for p in trl_trainer.model.parameters())  # TRL trained on into NaN weights

    trainer = Trainer(model=model_folder, args=args(), train_dataset=pair_dataset())
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert trainer.nonfinite_stop is not None and trainer.state.global_step < 6
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in trainer.model.parameters())  # nothing non-finite applied
    assert any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())  # the finite steps trained

    strict_args = PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "strict", max_steps=6, learning_rate=100.0,
                                                             model_init_kwargs={"dtype": torch.float16}))
    strict = Trainer(model=model_folder, args=strict_args, train_dataset=pair_dataset())
    with pytest.raises(NonFiniteError, match=r"step \d+: (LogProbs\.policy is nan|the gradient is non-finite)"):
        strict.train()
