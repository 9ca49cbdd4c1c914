"""The prefopt command speaks to people: a user error is one line on stderr and exit status 2, no traceback."""

import json
import subprocess
import sys

import pytest

from helpers_models import save_tiny_checkpoint
from prefopt.cli import common
from prefopt.cli import main as cli
from prefopt.cli import train as train_command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def pairs_file(tmp_path):
    rows = [{"question": f"{a} + {a} =", "good": f" {2 * a}", "bad": f" {2 * a + 1}"} for a in range(8)]
    rows.append({"question": "1 + 1 =", "good": " 2", "bad": " 2"})  # identical: invalid
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _fail(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    return captured.err.strip().splitlines()[-1], captured.err


# (argument list, what the one line must say). Paths are relative to a temporary working directory.
USER_ERRORS = {
    "bad flag value": (["train", "--learning_rate", "fast"], "invalid float value: 'fast'"),
    "bad choice": (["train", "--quantization", "3bit"], "invalid choice: '3bit'"),
    "unknown flag": (["train", "--learnin_rate", "1e-4"], "--learnin_rate"),
    "unknown loss": (["train", "--loss", "dpoo"], "unknown loss 'dpoo'"),
    "misspelt task": (["train", "--dataset", "arithmatic"], "did you mean 'arithmetic'?"),
    "missing data file": (["train", "--dataset", "no/such/file.jsonl"], "'no/such/file.jsonl' not found"),
    "missing eval file": (["train", "--eval_dataset", "held_out.csv"], "--eval_dataset file 'held_out.csv' not found"),
    "missing model folder": (["train", "--dataset", "sentiment", "--model_name_or_path", "./checkpoints/run-1"],
                             "model path './checkpoints/run-1' not found"),
    "missing absolute model path": (["train", "--dataset", "sentiment", "--model_name_or_path", "/no/such/model"],
                                    "model path '/no/such/model' not found"),
    "missing config": (["train", "--config", "run.yaml"], "config file 'run.yaml' not found"),
    "bad on_invalid": (["train", "--on_invalid", "skip"], "--on_invalid must be one of ['raise', 'drop']"),
    "bad column_map": (["train", "--column_map", "question"], "--column_map entries must be source=target"),
    "bad column_map JSON": (["train", "--column_map", "{question: prompt}"], "--column_map is not a valid JSON object"),
    "unknown format": (["train", "--dataset", "PAIRS", "--dataset_format", "hhh"], "unknown preference format 'hhh'"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_are_one_line_and_exit_2(case, capsys, tmp_path, monkeypatch, pairs_file):
    monkeypatch.chdir(tmp_path)
    argv, expected = USER_ERRORS[case]
    argv = [str(pairs_file) if item == "PAIRS" else item for item in argv]
    line, everything = _fail(argv, capsys)
    assert line.startswith("prefopt train: error: ") and expected in line
    assert "Traceback" not in everything and "repo id" not in everything.lower()


def test_debug_shows_the_traceback_and_still_exits_2(capsys):
    line, everything = _fail(["train", "--loss", "dpoo", "--debug"], capsys)
    assert "Traceback" in everything and "unknown loss 'dpoo'" in line


def test_debug_with_a_value_stays_the_training_option():
    assert common.take_debug_flag(["train", "--debug", "underflow_overflow"]) == (["train", "--debug", "underflow_overflow"], False)
    assert common.take_debug_flag(["--debug", "train", "--debug", "--loss", "dpo"]) == (["train", "--loss", "dpo"], True)


def test_invalid_rows_name_the_row_on_the_command_line(capsys, tmp_path, pairs_file):
    line, _ = _fail(["train", "--dataset", str(pairs_file), "--column_map", "question=prompt,good=chosen,bad=rejected"], capsys)
    assert "pairs.jsonl, line 9 (row 8), field 'chosen': chosen identical to rejected" in line


def test_the_real_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prefopt", "train", "--dataset", "arithmatic"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "did you mean 'arithmetic'?" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, None),
        ("", None),
        ("question=prompt, good=chosen", {"question": "prompt", "good": "chosen"}),
        ('{"question": "prompt"}', {"question": "prompt"}),
        ({"question": "prompt"}, {"question": "prompt"}),  # a YAML mapping
    ],
)
def test_column_map_forms(text, expected):
    assert train_command.parse_column_map(text) == expected


def test_default_output_dir_is_used_and_a_flag_or_yaml_overrides_it(tmp_path):
    assert train_command.parse_train_arguments([])[1].output_dir == train_command.DEFAULT_OUTPUT_DIR == "outputs/train"
    assert train_command.parse_train_arguments(["--output_dir", "elsewhere"])[1].output_dir == "elsewhere"
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: from/yaml\ncolumn_map:\n  question: prompt\n")
    script_args, training_args = train_command.parse_train_arguments(["--config", str(config)])
    assert training_args.output_dir == "from/yaml"


@pytest.mark.slow
def test_train_with_column_map_and_on_invalid_drop_trains_on_the_valid_rows(tmp_path, checkpoint, pairs_file, caplog):
    output_dir = tmp_path / "run"
    cli.main(["train", "--model_name_or_path", str(checkpoint), "--dataset", str(pairs_file), "--output_dir", str(output_dir),
              "--column_map", '{"question": "prompt", "good": "chosen", "bad": "rejected"}', "--on_invalid", "drop",
              "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none", "--lora_r", "4",
              "--use_cpu", "true", "--loss", "dpo"])
    assert (output_dir / "adapter_config.json").is_file()
    assert any("kept 8 of 9 rows" in record.getMessage() for record in caplog.records)
