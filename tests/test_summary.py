"""trainer.summary() and prefopt.plot_history: what a run did, for notebooks and terminals."""

from __future__ import annotations

import sys

import pytest
from datasets import Dataset

import prefopt
from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.training.summary import TrainingSummary, count_truncated, plot_history

# A hand-written log history in TRL's shape: two training logs, one evaluation, the final summary.
HISTORY = [
    {"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "step": 1, "epoch": 0.5},
    {"loss": 0.60, "rewards/margins": 0.2, "rewards/accuracies": 0.75, "step": 2, "epoch": 1.0},
    {"eval_loss": 0.55, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 1.0, "eval_runtime": 2.0,
     "eval_samples_per_second": 4.0, "eval_steps_per_second": 1.0, "step": 2, "epoch": 1.0},
    {"train_runtime": 10.0, "train_samples_per_second": 0.8, "train_steps_per_second": 0.2, "train_loss": 0.645,
     "step": 2, "epoch": 1.0},
]


def test_count_truncated_by_hand():
    dataset = Dataset.from_dict({
        "prompt_ids": [[1, 2], [1, 2, 3], [1]],
        "chosen_ids": [[4, 5], [4], [4, 5, 6, 7]],
        "rejected_ids": [[6], [6, 6], [6]],
    })
    # max_length 4: row 0 is 2+2=4 and 2+1 (fits), row 1 is 3+1=4 and 3+2=5 (cut), row 2 is 1+4=5 (cut)
    assert count_truncated(dataset, 4) == 2
    assert count_truncated(dataset, 5) == 0
    assert count_truncated(dataset, None) == 0
    kwise = Dataset.from_dict({"prompt_ids": [[1], [1, 2]], "completions_ids": [[[3], [4, 4, 4]], [[3], [4]]]})
    assert count_truncated(kwise, 3) == 1  # row 0: 1 + 3 = 4 > 3
    assert count_truncated(Dataset.from_dict({"prompt": ["x"]}), 3) is None  # not tokenised


def test_summary_renders_as_text_markdown_and_html():
    summary = TrainingSummary((("held-out", "eval_loss", 0.5), ("timing", "optimizer steps", 1200),
                               ("timing", "note", "<b>")))
    text = str(summary)
    assert text.splitlines() == [
        "held-out",
        "  eval_loss          0.5",
        "",
        "timing",
        "  optimizer steps  1,200",
        "  note               <b>",
    ]
    assert summary._repr_markdown_().splitlines()[2] == "| held-out | `eval_loss` | 0.5 |"
    assert "<td style='text-align:right'>&lt;b&gt;</td>" in summary._repr_html_()
    assert summary["optimizer steps"] == 1200 and summary.to_dict()["eval_loss"] == 0.5
    with pytest.raises(KeyError, match="'nope' is not in the summary"):
        summary["nope"]
    assert "train() first" in str(TrainingSummary(()))


@pytest.mark.slow
def test_trainer_summary_after_train(tmp_path):
    tokenizer = make_tokenizer()
    train = pair_dataset(8)
    # two rows with a long chosen answer: their prompt + response exceeds max_length and is cut
    train = train.map(lambda row, i: {"chosen": " good" * 20 if i < 2 else row["chosen"]}, with_indices=True)
    trainer = Trainer(
        make_model(), train_dataset=train, eval_dataset=pair_dataset(4), processing_class=tokenizer,
        args=PrefOptConfig(loss="dpo", max_length=14, eval_strategy="steps", eval_steps=2, **config_kwargs(tmp_path)),
    )
    trainer.train()
    summary = trainer.summary()
    values = summary.to_dict()
    history = trainer.state.log_history
    last_eval = [entry for entry in history if "eval_loss" in entry][-1]
    # evaluations at step 2 (eval_steps) and at the end of training (step 3)
    assert values["eval_loss"] == last_eval["eval_loss"] and values["evaluated at step"] == last_eval["step"] == 3
    assert values["optimizer steps"] == 3 and values["evaluations"] == 2
    final = history[-1]
    assert values["seconds per step"] == pytest.approx(final["train_runtime"] / 3)
    assert values["train rows used"] == 8 and values["eval rows used"] == 4
    assert values["train rows dropped (prompt fills max_length)"] == 0
    assert values["train rows truncated to max_length=14"] == count_truncated(trainer.train_dataset, 14) == 2
    assert values["eval rows truncated to max_length=14"] == 0
    assert len(values) == len(summary.rows), "row names are unique"
    assert "held-out (last evaluation)" in str(summary) and "<table>" in summary._repr_html_()


def test_plot_history_draws_train_and_held_out_curves(tmp_path):
    figure = plot_history(HISTORY, path=str(tmp_path / "history.png"))
    axes = figure.axes
    assert [axis.get_title() for axis in axes] == ["loss", "rewards/margins", "rewards/accuracies"]
    train_line, held_out_line = axes[0].get_lines()
    assert list(train_line.get_xdata()) == [1, 2] and list(train_line.get_ydata()) == [0.69, 0.60]
    assert list(held_out_line.get_xdata()) == [2] and list(held_out_line.get_ydata()) == [0.55]
    assert (tmp_path / "history.png").stat().st_size > 0
    assert prefopt.plot_history is plot_history


def test_plot_history_skips_unlogged_curves_and_names_what_was_logged():
    figure = plot_history(HISTORY, curves=["loss", "logps/chosen"])
    assert [axis.get_title() for axis in figure.axes] == ["loss"]
    with pytest.raises(ValueError, match=r"none of the curves \['kl'\] was logged; the history has \[.*'loss'"):
        plot_history(HISTORY, curves=["kl"])


def test_plot_history_without_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_history(HISTORY)
