"""Multi-process training: `accelerate launch` with 2 CPU processes (gloo) matches one process with the
same global batch (K-wise data, precomputed reference cache); the shipped accelerate configs parse."""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helpers_multiprocess_online
import helpers_multiprocess_train
from prefopt.distributed import VERIFIED, accelerate_config_path, list_accelerate_configs

HELPER = Path(helpers_multiprocess_train.__file__)
EXPECTED = {  # config -> (accelerate distributed type, launcher flag set by the config)
    "ddp": ("MULTI_GPU", "multi_gpu"),
    "ddp_cpu": ("MULTI_GPU", "multi_gpu"),
    "deepspeed_zero2": ("DEEPSPEED", "use_deepspeed"),
    "deepspeed_zero3": ("DEEPSPEED", "use_deepspeed"),
    "fsdp": ("FSDP", "use_fsdp"),
}


def test_every_shipped_config_is_known_and_documented():
    assert list_accelerate_configs() == sorted(EXPECTED) == sorted(VERIFIED)
    with pytest.raises(ValueError, match="unknown accelerate config 'ddp2'; shipped: ddp, ddp_cpu"):
        accelerate_config_path("ddp2")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configs_parse_as_accelerate_launch_reads_them(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = str(accelerate_config_path(name))
    config = load_config_from_file(path)
    distributed_type, flag = EXPECTED[name]
    assert config.distributed_type.name == distributed_type and config.num_processes == 2
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", path, "train.py"]))
    assert getattr(args, flag) is True and args.num_processes == 2
    if distributed_type == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if distributed_type == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_beside_one_process(helper: Path, double: Path, two_process_args: list[str], run_single, timeout: int):
    """`accelerate launch` ``helper`` on 2 CPU processes writing to ``double``, while ``run_single()`` makes the
    one-process run in this process; fails with the launch's output if it does."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    command = [accelerate, "launch", "--config_file", str(accelerate_config_path("ddp_cpu")), "--num_processes", "2",
               "--main_process_port", str(_free_port()), str(helper), str(double), *two_process_args]
    launched = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the single-process run, in this process, while the two others start
        run_single()
        output, _ = launched.communicate(timeout=timeout)
    finally:
        launched.kill()
    assert launched.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _launch_beside_one_process(
        HELPER, double, [str(tmp_path / "cache2"), str(helpers_multiprocess_train.GLOBAL_BATCH // 2)],
        lambda: helpers_multiprocess_train.main(str(single), str(tmp_path / "cache1"), helpers_multiprocess_train.GLOBAL_BATCH),
        timeout=300)
    one, two = torch.load(single / "result.pt"), torch.load(double / "result.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["misses"] == two["misses"] == 1  # each computed (and cached) its reference table
    torch.testing.assert_close(two["reference"], one["reference"], rtol=1e-5, atol=1e-5)
    assert len(one["losses"]) == len(two["losses"]) == helpers_multiprocess_train.STEPS
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-5)
    for name, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_online_rounds_under_two_cpu_processes_match_one_process(tmp_path):
    """`accelerate launch` of train_online: round data made once (main process), every process trains on it; the
    rounds' pairs, metrics and the final weights equal a one-process run with the same global batch."""
    single, double = tmp_path / "single", tmp_path / "double"
    _launch_beside_one_process(
        Path(helpers_multiprocess_online.__file__), double, [str(helpers_multiprocess_online.GLOBAL_BATCH // 2)],
        lambda: helpers_multiprocess_online.main(str(single), helpers_multiprocess_online.GLOBAL_BATCH), timeout=600)
    one, two = torch.load(single / "result.pt"), torch.load(double / "result.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["rows"] == two["rows"] and len(one["rows"]) == helpers_multiprocess_online.ROUNDS  # the same pairs per round
    assert [entry["round"] for entry in two["history"]] == [1, 2]
    for first, second in zip(one["history"], two["history"]):
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert second[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
    for name, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_python_dash_m_prefopt_distributed_prints_a_config_path(capsys):
    from prefopt.distributed import main

    assert main(["fsdp"]) == 0 and capsys.readouterr().out.strip() == str(accelerate_config_path("fsdp"))
    assert main(["fsdpp"]) == 2 and "unknown accelerate config 'fsdpp'" in capsys.readouterr().err
