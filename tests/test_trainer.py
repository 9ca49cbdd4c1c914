"""prefopt.Trainer on tiny in-memory models: TRL equivalence, data formats, K-wise, reference cache, PEFT, callbacks."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from helpers_trainer import (
    config_kwargs,
    conversational_dataset,
    kwise_dataset,
    make_model,
    make_tokenizer,
    pair_dataset,
)
from prefopt import PrefOptConfig, Trainer
from prefopt.callbacks import PreferenceEvalCallback, ReferenceRefreshCallback
from prefopt.losses import get_loss, list_losses

TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")


def _first_batch(trainer, size=4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(size)])


def _loss_and_gradients(trainer):
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, _first_batch(trainer))
    loss.backward()
    gradients = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), gradients


@pytest.mark.parametrize("trl_loss_type, label_smoothing", [("sigmoid", 0.0), ("robust", 0.2)])
def test_same_loss_and_gradients_as_trl(tmp_path, trl_loss_type, label_smoothing):
    """loss=<registry loss with trl_name> == trl.DPOTrainer(loss_type=trl_name), float32, same weights and batch."""
    ours_name = next(n for n in list_losses() if get_loss(n).trl_name == trl_loss_type)
    tokenizer, dataset, model = make_tokenizer(), pair_dataset(), make_model()
    shared = config_kwargs(tmp_path, beta=0.3)
    shared.pop("ref_logps_cache_dir")
    trl_trainer = DPOTrainer(
        copy.deepcopy(model), ref_model=copy.deepcopy(model), train_dataset=dataset, processing_class=tokenizer,
        args=DPOConfig(loss_type=[trl_loss_type], label_smoothing=label_smoothing, **shared),
    )
    kwargs = {"epsilon": label_smoothing} if "epsilon" in get_loss(ours_name).hyperparameters else {}
    ours = Trainer(
        copy.deepcopy(model), ref_model=copy.deepcopy(model), train_dataset=dataset, processing_class=tokenizer,
        args=PrefOptConfig(loss=ours_name, loss_kwargs=kwargs, **shared),
    )
    # perturb the policy identically so the margin is not exactly 0
    for trainer in (trl_trainer, ours):
        torch.manual_seed(1)
        with torch.no_grad():
            for parameter in trainer.model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    trl_loss, trl_gradients = _loss_and_gradients(trl_trainer)
    our_loss, our_gradients = _loss_and_gradients(ours)
    assert our_loss.item() != pytest.approx(0.6931, abs=1e-4)
    torch.testing.assert_close(our_loss, trl_loss, atol=1e-6, rtol=0)
    assert trl_gradients.keys() == our_gradients.keys()
    for name in trl_gradients:
        torch.testing.assert_close(our_gradients[name], trl_gradients[name], atol=1e-6, rtol=1e-5)
    for key in TRL_METRICS:
        assert ours._metrics["train"][key] == pytest.approx(trl_trainer._metrics["train"][key], abs=1e-6)


def test_plain_dpo_config_is_accepted(tmp_path):
    shared = config_kwargs(tmp_path)
    shared.pop("ref_logps_cache_dir")
    trainer = Trainer(make_model(), train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                      args=DPOConfig(loss_type=["sigmoid"], **shared))
    assert isinstance(trainer.args, PrefOptConfig) and trainer.preference_loss.names == ("dpo",)


@pytest.mark.parametrize("dataset_factory", [conversational_dataset, "implicit"], ids=["conversational", "implicit"])
def test_dataset_formats_train_and_log_trl_metrics(tmp_path, dataset_factory):
    if dataset_factory == "implicit":
        explicit = pair_dataset(4)
        dataset = explicit.map(lambda r: {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]},
                               remove_columns=["prompt"])
    else:
        dataset = dataset_factory()
    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer = Trainer(make_model(), train_dataset=dataset, processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, max_steps=2)), callbacks=[Recorder()])
    trainer.train()
    step_logs = [logs for logs in seen if "loss" in logs]
    assert step_logs, "a plain user TrainerCallback receives on_log"
    for key in (*TRL_METRICS, "loss/dpo"):
        assert key in step_logs[0]


def test_kwise_plackett_luce_with_ranking_and_varying_k(tmp_path):
    """K-wise rows (K = 3 and 4 in one batch, given shuffled with a ranking) train a ranked loss."""
    ranked = next(n for n in list_losses() if get_loss(n).kwise)
    trainer = Trainer(make_model(), train_dataset=kwise_dataset(8, with_ranking=True), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss=ranked, **config_kwargs(tmp_path, max_steps=6, learning_rate=3e-3)))
    row = trainer.train_dataset[0]
    assert row["completions"][0] == " good good"  # reordered best first by `ranking`
    batch = _first_batch(trainer)
    assert batch["response_index"].shape == (4, 4) and (batch["response_index"] < 0).sum() == 2
    trainer.train()
    # the loss value depends on each batch's K, so check the implicit reward margin (best vs worst) grows
    margins = [log["rewards/margins"] for log in trainer.state.log_history if "rewards/margins" in log]
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > margins[1] > 0
    assert f"loss/{ranked}" in trainer.state.log_history[0]
    assert "rewards/ranking_accuracy" in trainer.state.log_history[0]


def test_pairwise_loss_on_kwise_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="K-wise.*pairwise"):
        Trainer(make_model(), train_dataset=kwise_dataset(4), processing_class=make_tokenizer(),
                args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path)))


@pytest.mark.parametrize("field", ["scores", "previous", "empty_policy", "proposal"])
def test_missing_field_is_named_at_construction(tmp_path, field):
    names = [n for n in list_losses() if field in get_loss(n).required_fields]
    if not names:
        pytest.skip(f"no registered loss needs {field}")
    with pytest.raises(ValueError, match=field):
        Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                args=PrefOptConfig(loss=names[0], **config_kwargs(tmp_path)))


def test_scores_column_feeds_a_loss_that_needs_scores(tmp_path):
    names = [n for n in list_losses() if "scores" in get_loss(n).required_fields and not get_loss(n).kwise]
    if not names:
        pytest.skip("no pairwise loss needs scores")
    dataset = pair_dataset(4).map(lambda r: {"score_chosen": 2.0, "score_rejected": -1.0})
    trainer = Trainer(make_model(), train_dataset=dataset, processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss=names[0], **config_kwargs(tmp_path, max_steps=1)))
    assert torch.equal(_first_batch(trainer)["field_scores"][0], torch.tensor([2.0, -1.0]))
    trainer.train()


class _CountingTrainer(Trainer):
    reference_forwards = 0

    def reference_logps(self, inputs):
        type(self).reference_forwards += 1
        return super().reference_logps(inputs)


def _precomputing_trainer(tmp_path, model, dataset, loss="dpo", **overrides):
    return _CountingTrainer(
        model, train_dataset=dataset, processing_class=make_tokenizer(),
        args=PrefOptConfig(loss=loss, **config_kwargs(tmp_path, precompute_ref_log_probs=True, max_steps=1, **overrides)),
    )


def test_reference_cache_hits_for_same_model_and_data_and_misses_otherwise(tmp_path):
    _CountingTrainer.reference_forwards = 0
    first = _precomputing_trainer(tmp_path, make_model(), pair_dataset())
    assert first.reference_cache.misses == 1 and _CountingTrainer.reference_forwards > 0
    stored = first.train_dataset["ref_chosen_logps"]

    _CountingTrainer.reference_forwards = 0  # same weights and data, another loss: no reference forward at all
    second = _precomputing_trainer(tmp_path, make_model(), pair_dataset(), loss="ipo")
    assert second.reference_cache.hits == 1 and _CountingTrainer.reference_forwards == 0
    assert second.train_dataset["ref_chosen_logps"] == stored
    second.train()
    assert _CountingTrainer.reference_forwards == 0  # training reads the stored values too

    other_model = _precomputing_trainer(tmp_path, make_model(seed=1), pair_dataset())
    other_data = _precomputing_trainer(tmp_path, make_model(), pair_dataset(6))
    other_length = _precomputing_trainer(tmp_path, make_model(), pair_dataset(), max_length=3)
    assert other_model.reference_cache.misses == other_data.reference_cache.misses == other_length.reference_cache.misses == 1


def test_reference_cache_with_kwise_data(tmp_path):
    ranked = next(n for n in list_losses() if get_loss(n).kwise)
    first = _precomputing_trainer(tmp_path, make_model(), kwise_dataset(4), loss=ranked)
    second = _precomputing_trainer(tmp_path, make_model(), kwise_dataset(4), loss=ranked)
    assert (first.reference_cache.misses, second.reference_cache.hits) == (1, 1)
    assert [len(v) for v in second.train_dataset["ref_logps"]] == [3, 4, 3, 4]
    second.train()


def test_peft_reference_is_adapter_disabled_base_and_save_reload_continue(tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = Trainer(make_model(), train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, learning_rate=5e-3)), peft_config=lora)
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    trained = trainer.model.state_dict()

    reloaded = PeftModel.from_pretrained(make_model(), str(tmp_path / "adapter"), is_trainable=True)
    for name, value in reloaded.state_dict().items():
        if "lora_" in name:
            torch.testing.assert_close(value, trained[name])
    continued = Trainer(reloaded, train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                        args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "2", max_steps=2)))
    # TRL keeps a frozen copy of the loaded adapter as the reference ("ref"), so the first margin is 0 again
    continued.train()
    assert continued.state.global_step == 2


def test_preference_eval_callback_logs_heldout_metrics(tmp_path):
    callback = PreferenceEvalCallback(pair_dataset(4), every_n_steps=2)
    trainer = Trainer(make_model(), train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, max_steps=4)), callbacks=[callback])
    trainer.train()
    assert [step for step, _ in callback.history] == [2, 4]
    logged = [log for log in trainer.state.log_history if "heldout_loss" in log]
    assert len(logged) == 2 and "heldout_rewards/accuracies" in logged[0]
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(train_logs) == 4 and all("rewards/margins" in log for log in train_logs)


def test_reference_refresh_callback_moves_the_reference(tmp_path):
    model = make_model()
    reference = copy.deepcopy(model)
    callback = ReferenceRefreshCallback(every_n_steps=1, mixup_alpha=1.0)
    trainer = Trainer(model, ref_model=reference, train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, max_steps=2)), callbacks=[callback])
    trainer.train()
    assert callback.refreshes == 2
    for ref_parameter, parameter in zip(trainer.ref_model.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(ref_parameter, parameter)
    # after a hard refresh the implicit rewards restart from 0
    trainer.compute_loss(trainer.model, _first_batch(trainer))
    assert trainer._metrics["train"]["rewards/margins"][-1] == pytest.approx(0.0, abs=1e-6)


def test_reference_refresh_with_peft_is_refused(tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="PEFT"):
        Trainer(make_model(), train_dataset=pair_dataset(), processing_class=make_tokenizer(), peft_config=lora,
                args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path)), callbacks=[ReferenceRefreshCallback(1)])


def test_reference_free_loss_runs_no_reference(tmp_path):
    free = [n for n in list_losses() if not get_loss(n).needs_reference and get_loss(n).responses == "pair"]
    if not free:
        pytest.skip("no reference-free pairwise loss registered")
    _CountingTrainer.reference_forwards = 0
    trainer = _CountingTrainer(make_model(), train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                               args=PrefOptConfig(loss=free[0], **config_kwargs(tmp_path, max_steps=1)))
    assert trainer.ref_model is None
    trainer.train()
    assert _CountingTrainer.reference_forwards == 0


@pytest.mark.parametrize("factory", [pair_dataset, kwise_dataset], ids=["pairs", "kwise"])
def test_rows_dropped_for_long_prompts_are_counted_and_reported(tmp_path, factory, caplog):
    """TRL silently filters rows whose prompt alone fills max_length; prefopt reports how many."""
    dataset = factory(8)
    long_prompt = " ".join(["please"] * 40)
    dataset = dataset.map(lambda row, i: {"prompt": long_prompt if i < 3 else row["prompt"]}, with_indices=True)
    loss = "plackett_luce" if factory is kwise_dataset else "dpo"
    with caplog.at_level("WARNING", logger="prefopt.training.trainer"):
        trainer = Trainer(make_model(), train_dataset=dataset, processing_class=make_tokenizer(),
                          args=PrefOptConfig(loss=loss, max_length=20, **config_kwargs(tmp_path)))
    assert trainer.dropped_rows == {"train": 3}
    assert len(trainer.train_dataset) == 5
    assert "dropped 3 of 8 rows whose prompt alone fills max_length=20" in caplog.text


def test_reward_shift_callback_tracks_the_running_mean_reward(tmp_path):
    """BCO's delta = the count-weighted mean of beta * (policy - reference) over every response trained on,
    and each batch trains with the mean of the batches before it."""
    from prefopt.callbacks import LossStateCallback, RewardShiftCallback

    seen, deltas_used = [], []

    class Recorder(LossStateCallback):  # observes each batch before the shift callback does
        def observe(self, batch):
            seen.append(0.5 * (batch.policy - batch.reference).flatten())
            deltas_used.append(trainer.step_hyperparameters()["bco_pair"]["delta"])

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    shift = RewardShiftCallback()
    trainer = Trainer(make_model(), train_dataset=pair_dataset(8), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="bco_pair", beta=0.5, **config_kwargs(tmp_path, max_steps=3, learning_rate=5e-3)),
                      callbacks=[Recorder(), shift])
    assert trainer.step_hyperparameters()["bco_pair"]["delta"] == 0.0
    trainer.train()
    assert len(seen) == 3 and shift.count == sum(r.numel() for r in seen)
    expected = torch.cat(seen).double().mean().item()
    assert shift.mean == pytest.approx(expected, rel=1e-9) and expected != 0.0
    assert trainer.step_hyperparameters()["bco_pair"]["delta"] == shift.mean
    assert trainer.loss_hyperparameters["bco_pair"]["delta"] == 0.0  # the configured value is not overwritten
    assert deltas_used[0] == 0.0
    assert deltas_used[2] == pytest.approx(torch.cat(seen[:2]).double().mean().item(), rel=1e-9)


def test_reward_shift_callback_refuses_a_loss_without_the_shift(tmp_path):
    from prefopt.callbacks import RewardShiftCallback

    with pytest.raises(ValueError, match="needs hyper-parameters beta and 'delta'"):
        Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path)), callbacks=[RewardShiftCallback(loss="dpo")])


def test_a_run_stopped_at_max_steps_does_not_cut_the_metrics_computed_after_it(tmp_path):
    """A run ending at max_steps on an uneven last batch (3 rows, batches of 2) leaves its dataloader unfinished;
    accelerate would keep it active, and gather_for_metrics would cut every later metric to its remainder (1 row)."""
    first = Trainer(make_model(), train_dataset=pair_dataset(3), processing_class=make_tokenizer(),
                    args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "first", per_device_train_batch_size=2, max_steps=2)))
    first.train()
    assert not first.accelerator.gradient_state.in_dataloader
    second = Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                     args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path / "second")))
    batch = _first_batch(second)
    second.model.train()
    with torch.no_grad():
        fields, _ = second.batch_fields(second.model, batch)
        second.compute_loss(second.model, batch)
    assert second._metrics["train"]["logps/chosen"][-1] == pytest.approx(fields["policy"][:, 0].mean().item(), abs=1e-5)
