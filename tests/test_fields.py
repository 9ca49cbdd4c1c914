"""Field providers: a method plugs in the LogProbs fields it needs without editing the trainer, and the
one log-prob routine gives the same numbers in the trainer, in `prefopt.logprobs.score` and in the main job."""

import copy

import pytest
import torch

from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.training.fields import FieldProvider, ModelField, SampleField, Unavailable, resolve_providers, servable_fields
from prefopt.data.evaluation import preference_accuracy
from prefopt.logprobs import score
from prefopt.losses import LOGPROBS_FIELDS


def _first_batch(trainer):
    """The first 4 rows in dataset order (the training dataloader shuffles)."""
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(trainer.train_dataset, batch_size=4, collate_fn=trainer.data_collator)))


def test_every_logprobs_field_has_a_step_computation_or_a_default_provider():
    from prefopt.training.fields import STEP_FIELDS

    providers = resolve_providers()
    assert set(providers) | set(STEP_FIELDS) == set(LOGPROBS_FIELDS)


def test_a_provider_cannot_fill_a_field_the_step_computes_or_an_unknown_one():
    class Bad(FieldProvider):
        fields = ("policy",)

    with pytest.raises(ValueError, match="'policy'"):
        resolve_providers([Bad()])
    with pytest.raises(TypeError, match="FieldProvider"):
        resolve_providers([object()])


def test_missing_column_error_names_the_field_and_the_columns(tmp_path):
    with pytest.raises(ValueError, match=r"LogProbs.previous.*previous_chosen_logps.*lacks"):
        Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                args=PrefOptConfig(loss="inpo", **config_kwargs(tmp_path)))


def test_unavailable_field_error_names_the_field_and_how_to_plug_a_provider(tmp_path):
    with pytest.raises(ValueError, match=r"LogProbs.empty_policy/empty_reference.*field_providers"):
        Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                args=PrefOptConfig(loss="bvpo", **config_kwargs(tmp_path)))


def test_servable_fields_of_the_bundled_task_rows():
    from prefopt.data import get_task

    row = get_task("arithmetic").load("pairwise", split="train")[0]
    assert servable_fields(row) == {"policy", "lengths", "mask", "weights", "reference", "scores"}


def test_model_field_feeds_previous_with_a_forward_under_another_model(tmp_path):
    """INPO's pi_t log-probs from a forward pass (no `previous_*` columns): equal to scoring under pi_t."""
    previous_policy = make_model(seed=3)
    trainer = Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="inpo", **config_kwargs(tmp_path, max_steps=1)),
                      field_providers=[ModelField("previous", previous_policy)])
    batch = _first_batch(trainer)
    provided = trainer.field_providers["previous"].provide(trainer.field_context, batch, batch["response_index"])["previous"]
    rows = pair_dataset(4)
    expected = score(previous_policy, make_tokenizer(), list(rows["prompt"]) * 2, list(rows["chosen"]) + list(rows["rejected"]))
    torch.testing.assert_close(provided, torch.stack([expected.logps[:4], expected.logps[4:]], 1), atol=1e-5, rtol=0)
    trainer.train()
    assert trainer.state.global_step == 1


def test_sample_field_feeds_online_vpo_calibration_fields(tmp_path):
    """VPO online: y_cal per prompt in a column, scored under the policy (with gradient) and the reference."""
    data = pair_dataset(4).add_column("calibration", [" ok ok"] * 4)
    model = make_model()
    trainer = Trainer(model, ref_model=copy.deepcopy(model), train_dataset=data, processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="vpo", loss_kwargs={"mode": "online"}, **config_kwargs(tmp_path, max_steps=1)),
                      field_providers=[SampleField("calibration_policy", "calibration_reference", column="calibration")])
    batch = _first_batch(trainer)
    fields = trainer.field_providers["calibration_policy"].provide(trainer.field_context, batch, batch["response_index"])
    expected = score(model, make_tokenizer(), list(data["prompt"]), list(data["calibration"])).logps
    torch.testing.assert_close(fields["calibration_policy"].detach(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fields["calibration_reference"], expected, atol=1e-5, rtol=0)  # ref = initial copy
    assert fields["calibration_policy"].requires_grad
    trainer.train()


def test_sample_field_refuses_data_without_its_column(tmp_path):
    with pytest.raises(ValueError, match="column 'calibration'"):
        Trainer(make_model(), train_dataset=pair_dataset(4), processing_class=make_tokenizer(),
                args=PrefOptConfig(loss="vpo", loss_kwargs={"mode": "online"}, **config_kwargs(tmp_path)),
                field_providers=[SampleField("calibration_policy", "calibration_reference", column="calibration")])


def test_trainer_score_and_main_job_share_one_log_prob_routine(tmp_path):
    """The trainer's policy log-probs (fused head), `score` (logits) and the main job's evaluation agree."""
    from prefopt.main_job import sequence_logps

    model = make_model()
    data = pair_dataset(4)
    trainer = Trainer(model, train_dataset=data, processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, max_steps=1)))
    trainer.model.eval()
    trainer.compute_loss(trainer.model, _first_batch(trainer))
    trainer_chosen = trainer._metrics["eval"]["logps/chosen"][-1]
    evaluated = sequence_logps(trainer.model, make_tokenizer(), list(data))
    assert evaluated["chosen"].mean().item() == pytest.approx(trainer_chosen, abs=1e-5)


def test_preference_accuracy_counts_ties_as_wrong():
    # pairs: 1 > 0.5 right, 0.2 < 0.4 wrong, 0.3 == 0.3 tie (wrong): accuracy 1/3, margin (0.5 - 0.2 + 0) / 3
    result = preference_accuracy([1.0, 0.2, 0.3], [0.5, 0.4, 0.3])
    assert result["accuracy"] == pytest.approx(1 / 3) and result["ties"] == 1 and result["count"] == 3
    assert result["mean_margin"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least one pair"):
        preference_accuracy([], [])
