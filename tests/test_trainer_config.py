"""PrefOptConfig: loss names and help from the registry, validation, command-line form, TRL mapping."""

import pytest
from transformers import HfArgumentParser

from prefopt import PrefOptConfig
from prefopt.config import parse_loss
from prefopt.losses import get_loss, list_losses

CPU = dict(output_dir="unused", bf16=False, use_cpu=True, report_to="none")


def test_help_lists_every_registered_loss():
    help_text = next(f for f in PrefOptConfig.__dataclass_fields__.values() if f.name == "loss").metadata["help"]
    for name in list_losses():
        assert f"`{name}`" in help_text


def test_unknown_loss_lists_registered_ones():
    with pytest.raises(ValueError, match="registered losses: .*dpo"):
        PrefOptConfig(loss="not_a_loss", **CPU)


def test_unknown_hyperparameter_is_refused():
    with pytest.raises(TypeError, match="gamma"):
        PrefOptConfig(loss="dpo", loss_kwargs={"gamma": 1.0}, **CPU)


def test_invalid_hyperparameter_value_is_refused_by_the_spec():
    with pytest.raises(ValueError, match="beta"):
        PrefOptConfig(loss="dpo", beta=-1.0, **CPU)


def test_beta_comes_from_args_unless_loss_kwargs_sets_it():
    assert PrefOptConfig(loss="dpo", beta=0.3, **CPU).loss_hyperparameters() == {"dpo": {"beta": 0.3}}
    config = PrefOptConfig(loss="dpo", beta=0.3, loss_kwargs={"beta": 0.05}, **CPU)
    assert config.loss_hyperparameters()["dpo"]["beta"] == 0.05


_LOSSES_WITH_BETA = [name for name in list_losses() if "beta" in get_loss(name).hyperparameters]


@pytest.mark.parametrize("name", _LOSSES_WITH_BETA)
def test_a_loss_trains_with_its_own_beta_unless_beta_is_set(name):
    """Unset beta: the registry default (simpo 2.0, not TRL's 0.1); set beta (even to TRL's 0.1): that value."""
    own = get_loss(name).hyperparameters["beta"]
    assert PrefOptConfig(loss=name, **CPU).loss_hyperparameters()[name]["beta"] == own
    assert PrefOptConfig(loss=name, beta=0.1, **CPU).loss_hyperparameters()[name]["beta"] == 0.1
    assert PrefOptConfig(loss=name, loss_kwargs={"beta": 0.7}, **CPU).loss_hyperparameters()[name]["beta"] == 0.7


def test_simpo_trains_at_its_paper_beta_by_default():
    assert PrefOptConfig(loss="simpo", **CPU).loss_hyperparameters()["simpo"]["beta"] == 2.0
    combined = PrefOptConfig(loss="simpo,dpo", **CPU).loss_hyperparameters()
    assert combined["simpo"]["beta"] == 2.0 and combined["dpo"]["beta"] == get_loss("dpo").hyperparameters["beta"]


def test_trl_style_config_keeps_trls_default_beta():
    """Choosing the loss TRL's way (loss_type) keeps TRL's semantics: beta 0.1 unless set."""
    assert PrefOptConfig(loss_type="sigmoid", **CPU).loss_hyperparameters()["dpo"]["beta"] == 0.1
    assert PrefOptConfig(loss_type="sigmoid", beta=0.4, **CPU).loss_hyperparameters()["dpo"]["beta"] == 0.4


@pytest.mark.parametrize("argv, expected", [([], 2.0), (["--beta", "0.1"], 0.1)], ids=["unset", "flag"])
def test_command_line_beta_is_explicit_only_when_given(argv, expected):
    parser = HfArgumentParser(PrefOptConfig)
    (config,) = parser.parse_args_into_dataclasses(["--output_dir", "x", "--bf16", "false", "--use_cpu", "true",
                                                    "--loss", "simpo", *argv])
    assert config.loss_hyperparameters()["simpo"]["beta"] == expected


@pytest.mark.parametrize("yaml_text, expected", [("loss: simpo\n", 2.0), ("loss: simpo\nbeta: 0.1\n", 0.1)],
                         ids=["unset", "set"])
def test_yaml_beta_is_explicit_only_when_given(tmp_path, yaml_text, expected):
    from prefopt.cli.train import parse_train_arguments

    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml_text)
    _, config = parse_train_arguments(["--config", str(config_file), "--output_dir", str(tmp_path)])
    assert config.loss_hyperparameters()["simpo"]["beta"] == expected


def test_combination_with_per_component_kwargs():
    config = PrefOptConfig(loss=[("dpo", 1.0), ("rpo", 0.5)], loss_kwargs={"rpo": {"eta": 0.2}, "beta": 0.2}, **CPU)
    assert config.loss_components() == (("dpo", 1.0), ("rpo", 0.5))
    resolved = config.loss_hyperparameters()
    assert resolved["rpo"]["eta"] == 0.2 and resolved["rpo"]["beta"] == 0.2 and resolved["dpo"]["beta"] == 0.2


@pytest.mark.parametrize(
    "text, expected",
    [("dpo", (("dpo", 1.0),)), ("dpo:1.0,sft:0.5", (("dpo", 1.0), ("sft", 0.5))), ("dpo, sft", (("dpo", 1.0), ("sft", 1.0)))],
)
def test_command_line_encoding(text, expected):
    assert parse_loss(text) == expected


def test_duplicate_component_is_refused():
    with pytest.raises(ValueError, match="more than once"):
        parse_loss("dpo,dpo:0.5")


def test_hf_argument_parser_sets_loss_and_kwargs():
    parser = HfArgumentParser(PrefOptConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--bf16", "false", "--use_cpu", "true", "--loss", "rdpo",
         "--loss_kwargs", '{"epsilon": 0.2}', "--beta", "0.25"]
    )
    assert config.loss_hyperparameters() == {"rdpo": {"beta": 0.25, "epsilon": 0.2}}


def test_trl_loss_type_maps_through_the_registry():
    by_trl_name = {get_loss(n).trl_name: n for n in list_losses() if get_loss(n).trl_name}
    config = PrefOptConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], **CPU)
    assert config.loss_components() == ((by_trl_name["sigmoid"], 1.0), (by_trl_name["sft"], 0.5))
    robust = PrefOptConfig(loss_type="robust", label_smoothing=0.2, **CPU)
    assert robust.loss_hyperparameters()[by_trl_name["robust"]]["epsilon"] == 0.2
    with pytest.raises(ValueError, match="no registered prefopt equivalent"):
        PrefOptConfig(loss_type="not_in_trl", **CPU)


# --- strings from the command line or YAML, and combination weights, are checked when the config is built ---

_CPU = dict(use_cpu=True, bf16=False)


@pytest.mark.parametrize(
    "loss_kwargs, expected",
    [('{"epsilon": "0.2"}', {"epsilon": 0.2}), ({"epsilon": " 0.1 "}, {"epsilon": 0.1}), ({"epsilon": 0.3}, {"epsilon": 0.3})],
)
def test_loss_kwargs_strings_are_converted_to_the_hyperparameter_type(loss_kwargs, expected):
    args = PrefOptConfig("out", loss="rdpo", loss_kwargs=loss_kwargs, **_CPU)
    assert args.loss_kwargs == expected
    assert args.loss_hyperparameters()["rdpo"]["epsilon"] == expected["epsilon"]


@pytest.mark.parametrize(
    "loss, loss_kwargs, message",
    [
        ("rdpo", '{"epsilon": "a lot"}', r"loss_kwargs\.epsilon must be a number, got the string 'a lot'"),
        ("dpo:1,rpo:0.5", {"rpo": {"eta": "x"}}, r"loss_kwargs\.rpo\.eta must be a number"),
        ("rdpo", '{"epsilon": ', r"loss_kwargs .* is not JSON"),
        ("rdpo", "[0.2]", r"loss_kwargs must be a dict"),
        ("rdpo", '{"epsilon": "0.7"}', r"epsilon must be a finite number in \[0, 0.5\), got 0.7"),
        ("rdpo", '{"epsilon": NaN}', r"epsilon must be a finite number in \[0, 0.5\), got nan"),
    ],
)
def test_bad_loss_kwargs_are_refused_naming_the_field(loss, loss_kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrefOptConfig("out", loss=loss, loss_kwargs=loss_kwargs, **_CPU)


@pytest.mark.parametrize("weight", ["0", "-1", "nan", "inf"])
def test_combination_weights_must_be_finite_and_positive(weight):
    with pytest.raises(ValueError, match=r"weight of loss 'sft' must be a finite number > 0"):
        PrefOptConfig("out", loss=f"dpo:1,sft:{weight}", **_CPU)
