"""The prefopt command (losses / train / main) and the main job's held-out metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers_models import save_tiny_checkpoint
from prefopt import main_job, models
from prefopt.cli import annotate as annotate_command
from prefopt.cli import common
from prefopt.cli import losses as losses_command
from prefopt.cli import main as cli
from prefopt.cli import train as train_command
from prefopt.losses import get_loss, list_losses


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def test_losses_table_has_one_row_per_registered_loss_with_its_defaults():
    table = losses_command.losses_table().splitlines()
    assert len(table) == 2 + len(list_losses())
    for name, row in zip(list_losses(), table[2:]):
        spec = get_loss(name)
        assert row.startswith(f"| `{name}` |")
        for hyperparameter in spec.hyperparameters:
            assert f"{hyperparameter} (" in row
        if spec.arxiv:
            assert spec.arxiv in row


def test_python_dash_m_prefopt_lists_the_losses_quietly_in_the_terminal_width():
    result = subprocess.run(
        [sys.executable, "-m", "prefopt", "losses"], capture_output=True, text=True, check=True, env=_env(COLUMNS="80")
    )
    assert result.stderr == "", "no warnings: nothing in `prefopt losses` is for the user to act on"
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = lines[2 : lines.index("")]
    assert [line.split()[0] for line in rows if line[:1].strip()] == list_losses()
    markdown = subprocess.run(
        [sys.executable, "-m", "prefopt", "losses", "--markdown"], capture_output=True, text=True, check=True, env=_env()
    )
    assert markdown.stdout.strip() == losses_command.losses_table()


def _env(**extra):
    import os

    return {**os.environ, **extra}


@pytest.mark.parametrize("width", [72, 80, 120, 200])  # 72: the narrowest that breaks no word
def test_terminal_table_fits_the_width_and_keeps_every_value(width):
    from prefopt.losses._table import terminal_table

    table = terminal_table(width=width)
    assert max(len(line) for line in table.splitlines()) <= width
    words = set(table.split())
    for name in list_losses():
        spec = get_loss(name)
        assert name in words
        for hyperparameter in spec.hyperparameters:  # wrapped cells break between values, never inside one
            assert any(word.startswith(f"{hyperparameter}=") for word in words)


def test_a_terminal_too_narrow_gets_the_narrowest_table_that_breaks_no_word():
    from prefopt.losses._table import terminal_table

    table = terminal_table(width=10)
    assert "plackett_luce" in table.split() and "empty_reference" in table.replace(",", " ").split()


@pytest.mark.parametrize("name", list_losses())
def test_loss_card_shows_everything_the_registry_knows(name, capsys):
    cli.main(["losses", name])
    card = capsys.readouterr().out
    spec = get_loss(name)
    assert card.startswith(f"{name}\n") and spec.summary.split()[0] in card and spec.paper.split()[0] in card
    for hyperparameter, default in spec.hyperparameters.items():
        line = next(line for line in card.splitlines() if line.startswith(f"  {hyperparameter} = "))
        if hyperparameter in spec.ranges and str(spec.ranges[hyperparameter]):
            assert f"a finite number {spec.ranges[hyperparameter]}" in line
        for choice in spec.choices.get(hyperparameter, ()):
            assert repr(choice) in line
    if spec.arxiv:
        assert f"https://arxiv.org/abs/{spec.arxiv}" in card
    for field_name in spec.required_fields:
        assert field_name in card


def test_rdpo_card_by_hand():
    from prefopt.losses._table import loss_card

    card = loss_card("rdpo", width=100)
    assert "  epsilon = 0.1  (a finite number in [0, 0.5))" in card.splitlines()
    assert "  beta = 0.1  (a finite number > 0)" in card.splitlines()
    assert "TRL loss_type:   robust" in card and "arXiv:           2403.00409" in card


def test_losses_command_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["losses", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["losses", "dpo", "--markdown"])
    assert "either NAME or --markdown" in capsys.readouterr().err


def test_no_command_prints_usage_and_fails():
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


def test_train_arguments_come_from_yaml_and_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_name_or_path: some/model\nquantization: 4bit\nloss: dpo\nbeta: 0.2\nlearning_rate: 1.0e-4\n"
        "lora_r: 8\noutput_dir: out/run\n"
    )
    script_args, training_args = train_command.parse_train_arguments(["--config", str(config), "--learning_rate", "3e-4"])
    assert script_args.model_name_or_path == "some/model" and script_args.quantization == "4bit"
    assert script_args.lora_r == 8 and script_args.use_lora is True
    assert training_args.learning_rate == 3e-4  # the flag wins over the YAML
    assert training_args.beta == 0.2 and training_args.output_dir == "out/run"
    assert training_args.loss_components() == (("dpo", 1.0),)


def test_readme_yaml_example_parses(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("<!-- models:start -->", 1)[1].split("<!-- models:end -->", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    config = tmp_path / "run.yaml"
    config.write_text(block)
    script_args, training_args = train_command.parse_train_arguments(["--config", str(config)])
    assert script_args.model_name_or_path == "default" and training_args.loss_components()[0][0] == "dpo"


def test_unknown_yaml_keys_are_rejected(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rat: 1.0e-4\n")
    with pytest.raises(common.UserError, match="learning_rat"):
        train_command.parse_train_arguments(["--config", str(config)])


def test_preference_metrics_by_hand():
    # beta = 0.5; pair 1: rewards 0.5*(-1-(-2)) = 0.5 vs 0.5*(-4-(-3)) = -0.5 -> margin 1.0, correct;
    # pair 2: rewards 0.5*(-3-(-3)) = 0 vs 0.5*(-1-(-2)) = 0.5 -> margin -0.5, wrong. Mean margin 0.25.
    policy = {"chosen": torch.tensor([-1.0, -3.0]), "rejected": torch.tensor([-4.0, -1.0]),
              "chosen_tokens": torch.tensor([1, 3]), "rejected_tokens": torch.tensor([4, 1])}
    reference = {"chosen": torch.tensor([-2.0, -3.0]), "rejected": torch.tensor([-3.0, -2.0])}
    metrics = main_job.preference_metrics(policy, reference, beta=0.5)
    assert metrics["reward_accuracy"] == 0.5 and metrics["reward_margin"] == pytest.approx(0.25)
    # log-probs: -1 > -4 yes, -3 > -1 no; per token: -1 > -1 no (tie), -1 > -1 no
    assert metrics["logp_accuracy"] == 0.5 and metrics["logp_per_token_accuracy"] == 0.0
    assert metrics["logp_margin"] == pytest.approx(0.5)


def test_sequence_logps_sum_the_response_tokens_only(checkpoint):
    model, tokenizer = models.load_model(checkpoint)
    row = {"prompt": [{"role": "user", "content": "2 + 2?"}], "chosen": [{"role": "assistant", "content": "4"}],
           "rejected": [{"role": "assistant", "content": "five"}]}
    logps = main_job.sequence_logps(model, tokenizer, [row, row], batch_size=3)  # a batch split across rows
    prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
    ids = tokenizer.apply_chat_template(row["prompt"] + row["rejected"], return_dict=True)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    start = len(prompt_ids)
    with torch.no_grad():
        token_logps = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
    expected = sum(token_logps[position - 1, ids[position]] for position in range(start, len(ids)))
    torch.testing.assert_close(logps["rejected"], torch.stack([expected, expected]), rtol=1e-4, atol=1e-4)
    assert logps["rejected_tokens"].tolist() == [len(ids) - start] * 2


@pytest.mark.slow
def test_train_command_runs_on_a_tiny_model_and_a_jsonl_file(tmp_path, checkpoint):
    rows = [{"prompt": f"{a} + {a} =", "chosen": f" {2 * a}", "rejected": f" {2 * a + 1}"} for a in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "run"
    cli.main(["train", "--model_name_or_path", str(checkpoint), "--dataset", str(data), "--output_dir", str(output_dir),
              "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--lora_r", "4",
              "--use_cpu", "true", "--loss", "dpo"])
    assert (output_dir / "adapter_config.json").is_file()
    assert not (output_dir / "ref").exists(), "the reference is the adapter-disabled base, not a saved adapter copy"


@pytest.mark.slow
def test_main_job_writes_metrics_and_adapter(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(main_job, "default_model", lambda **kwargs: models.load_model(checkpoint, **kwargs))
    result = main_job.main(["--output-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "2", "--num-test-pairs", "4"])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["before"] == result["before"] and written["after"]["num_pairs"] == 4
    assert written["before"]["reward_margin"] == 0.0  # a fresh adapter is the reference
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "ref").exists()


def test_main_job_offers_exactly_the_losses_its_pairwise_data_can_feed():
    offered = set(main_job.trainable_losses())
    assert "dpo" in offered
    for name in list_losses():
        spec = get_loss(name)
        feedable = spec.responses != "single" and set(spec.required_fields) <= {"policy", "reference", "lengths", "mask", "scores"}
        assert (name in offered) == feedable, name


def _short_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {a} + 1?"}) + "\n" for a in range(3)))
    return path


@pytest.mark.slow
def test_annotate_command_writes_scored_rows_with_the_task_reward(tmp_path, checkpoint, capsys):
    output = tmp_path / "pairs.jsonl"
    report = annotate_command.run(["--prompts", str(_short_prompts(tmp_path)), "--task", "arithmetic", "--output", str(output),
                           "--model", str(checkpoint), "--n", "3", "--max-new-tokens", "4"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert report["prompts"] == 3 and report["samples"] == 9 and len(rows) == report["rows"]
    assert all(row["score_chosen"] > row["score_rejected"] for row in rows)
    assert f"wrote {len(rows)} rows" in capsys.readouterr().out


@pytest.mark.slow
def test_annotate_command_cdr_with_an_adapter_over_its_base(tmp_path, checkpoint):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    base, _ = models.load_model(checkpoint)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(adapter)
    output = tmp_path / "ranked.jsonl"
    report = annotate_command.run(["--prompts", str(_short_prompts(tmp_path)), "--reward", "cdr", "--adapter", str(adapter),
                           "--model", str(checkpoint), "--output", str(output), "--n", "3", "--max-new-tokens", "4",
                           "--pairing", "ranked", "--system-prompt", "Answer with a number."])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == report["rows"] >= 1
    assert all(row["scores"] == sorted(row["scores"], reverse=True) and len(row["completions"]) >= 2 for row in rows)


def test_annotate_command_refuses_cdr_without_a_strong_weak_pair(tmp_path, checkpoint):
    with pytest.raises(common.UserError, match="--adapter"):
        annotate_command.run(["--prompts", str(_short_prompts(tmp_path)), "--reward", "cdr", "--model", str(checkpoint),
                      "--output", str(tmp_path / "x.jsonl")])
# --- help and noise -------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [["--help"], ["losses"], ["losses", "rdpo"], ["train", "--help"]])
def test_commands_print_no_warnings(arguments):
    result = subprocess.run(
        [sys.executable, "-m", "prefopt", *arguments], capture_output=True, text=True, check=True, env=_env(COLUMNS="100")
    )
    assert result.stderr == "", f"prefopt {' '.join(arguments)} wrote to stderr:\n{result.stderr}"


def test_train_help_shows_prefopt_options_then_the_common_training_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
    from dataclasses import fields

    from prefopt.config import PrefOptConfig

    prefopt_options = [f"--{f.name}" for f in fields(train_command.ScriptArguments)] + [f"--{n}" for n in PrefOptConfig.__annotations__]
    common = [f"--{name}" for name in train_command.COMMON_TRAINING_OPTIONS]
    shown = [option for option in options if not option.startswith("--no_")]
    assert shown == ["--config", "--help-all", *dict.fromkeys([*prefopt_options, *common])]  # each option once
    assert "--fsdp" not in options and "prefopt train --help-all" in text
    assert len(text.splitlines()) < 200


def test_train_help_all_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help-all"])
    text = capsys.readouterr().out
    for action in train_command._parser()._actions:
        assert action.option_strings[0] in text


def test_negative_flags_say_what_they_do(capsys):
    parser = train_command._parser()
    (no_lora,) = [action for action in parser._actions if "--no_use_lora" in action.option_strings]
    assert no_lora.help.startswith("Turn use_lora off") and "Train a LoRA" not in no_lora.help
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    block = text[text.index("--no_use_lora") :].split("\n  --")[0]
    assert "(default: False)" not in block
    script_args, _ = train_command.parse_train_arguments(["--no_use_lora", "--report_to", "none"])
    assert script_args.use_lora is False
    script_args, training_args = train_command.parse_train_arguments(["--report_to", "none"])
    assert script_args.use_lora is True and training_args.output_dir == "outputs/train"


def test_every_command_is_one_module_in_the_table():
    """A command is one file with run(argv), and one row of the command table (its module and a one-line summary,
    shown by `prefopt --help`)."""
    import importlib
    import pkgutil

    import prefopt.cli

    modules = {info.name for info in pkgutil.iter_modules(prefopt.cli.__path__)} - {"main", "common"}
    assert {module for module, _ in cli.COMMANDS.values()} == {f"prefopt.cli.{name}" for name in modules}
    for name, (module_name, summary) in cli.COMMANDS.items():
        assert callable(importlib.import_module(module_name).run) and summary and "\n" not in summary, name
