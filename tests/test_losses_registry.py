"""The registry's contract: names, defaults (as LOSSES.md), strict registration, clear errors."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefopt.losses import LogProbs, Range, combine_losses, get_loss, list_losses, register_loss, unregister_loss

from helpers_losses import full_batch, pair

# Hyper-parameter names and defaults exactly as ../shared/LOSSES.md (and TRL 1.16 for TRL's loss types).
CONTRACT_DEFAULTS = {
    "dpo": {"beta": 0.1},
    "cdpo": {"beta": 0.1, "epsilon": 0.1},
    "rdpo": {"beta": 0.1, "epsilon": 0.1},
    "rpo": {"beta": 0.1, "eta": 0.005, "variant": "sum"},
    "vpo": {"beta": 0.1, "alpha": 0.1, "mode": "offline"},
    "inpo": {"eta": 0.005, "ratio": 1 / 3},
    "cdr": {"beta": 0.1, "temperature": 1.0},
    "bvpo": {"beta": 0.1, "alpha": 0.5},
    "plackett_luce": {"beta": 0.1},
    "simpo": {"beta": 2.0, "gamma": 0.5},
    "fdpg": {"divergence": "js", "log_z": 0.0, "baseline": 0.0},
    "sft": {},
    "ipo": {"beta": 0.1},
    "hinge": {"beta": 0.1},
    "exo_pair": {"beta": 0.1, "epsilon": 1e-3},
    "nca_pair": {"beta": 0.1},
    "bco_pair": {"beta": 0.1, "delta": 0.0},
    "sppo_hard": {"beta": 0.1},
    "aot": {"beta": 0.1, "epsilon": 0.0},
    "aot_unpaired": {"beta": 0.1, "epsilon": 0.0},
    "apo_zero": {"beta": 0.1},
    "apo_down": {"beta": 0.1},
    "discopop": {"beta": 0.1, "tau": 0.05},
    "sigmoid_norm": {"beta": 0.1},
}
TRL_1_16_LOSS_TYPES = {
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
}  # fmt: skip


def test_every_contract_loss_is_registered():
    assert set(CONTRACT_DEFAULTS) <= set(list_losses())


@pytest.mark.parametrize("name", sorted(CONTRACT_DEFAULTS))
def test_defaults_follow_the_contract(name):
    assert dict(get_loss(name).hyperparameters) == CONTRACT_DEFAULTS[name]


def test_every_trl_loss_type_has_a_registered_equivalent():
    assert {get_loss(n).trl_name for n in list_losses()} - {None} == TRL_1_16_LOSS_TYPES


def test_capabilities():
    assert get_loss("plackett_luce").kwise and not get_loss("dpo").kwise
    assert not get_loss("simpo").needs_reference and get_loss("dpo").needs_reference
    assert get_loss("fdpg").responses == "single"
    assert set(get_loss("inpo").required_fields) == {"policy", "reference", "previous"}


def test_list_losses_is_sorted_snake_case():
    names = list_losses()
    assert names == sorted(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)


# --- errors -------------------------------------------------------------------------------------


def test_unknown_loss_lists_registered_names():
    with pytest.raises(ValueError, match=r"unknown loss 'dpoo'.*dpo.*rdpo"):
        get_loss("dpoo")


def test_unknown_hyperparameter_lists_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown hyper-parameter\(s\) \['gamma'\].*beta \(default 0.1\).*epsilon"):
        get_loss("rdpo")(full_batch(get_loss("rdpo")), gamma=1.0)


def test_missing_required_field_is_named():
    with pytest.raises(ValueError, match=r"'inpo' needs LogProbs.previous"):
        get_loss("inpo")(pair([[-1.0, -2.0]], [[-1.0, -1.0]]))
    with pytest.raises(ValueError, match=r"'dpo' needs LogProbs.reference"):
        get_loss("dpo")(pair([[-1.0, -2.0]]))


def test_shape_mismatch_names_the_field():
    with pytest.raises(ValueError, match=r"LogProbs.reference has shape \(3, 2\).*must have shape \(4, 2\)"):
        LogProbs(policy=torch.zeros(4, 2), reference=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"LogProbs.calibration_policy .* must have shape \(4,\)"):
        LogProbs(policy=torch.zeros(4, 2), calibration_policy=torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"LogProbs.policy must have shape \[B, K\]"):
        LogProbs(policy=torch.zeros(4))
    with pytest.raises(TypeError, match=r"LogProbs.lengths must be a torch.Tensor"):
        LogProbs(policy=torch.zeros(4, 2), lengths=[1, 2])
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        LogProbs(policy=torch.zeros(1, 3), mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"mask row 1 has 1 real column"):
        LogProbs(policy=torch.zeros(2, 3), mask=torch.tensor([[True, True, True], [True, False, False]]))


@pytest.mark.parametrize("name", [n for n in list_losses() if get_loss(n).responses == "pair"])
def test_pairwise_loss_refuses_k_greater_than_2(name):
    spec = get_loss(name)
    with pytest.raises(ValueError, match=r"pairwise and needs K = 2.*got K = 3.*to_pairs.*plackett_luce"):
        spec(full_batch(spec, num_responses=3))


def test_response_count_errors_for_ranked_and_single_losses():
    with pytest.raises(ValueError, match=r"needs K >= 2, got K = 1"):
        get_loss("plackett_luce")(full_batch(get_loss("plackett_luce"), num_responses=1))
    with pytest.raises(ValueError, match=r"one sampled response per example \(K = 1\), got K = 2"):
        get_loss("fdpg")(full_batch(get_loss("fdpg"), num_responses=2))


@pytest.mark.parametrize("epsilon", [0.5, 0.7, -0.1, math.nan])
def test_rdpo_refuses_epsilon_outside_zero_to_half(epsilon):
    with pytest.raises(ValueError, match=r"epsilon must be a finite number in \[0, 0.5\), got"):
        get_loss("rdpo")(full_batch(get_loss("rdpo")), epsilon=epsilon)


# Declared ranges, written out by hand from the papers (LOSSES.md); beta > 0 everywhere it appears.
CONTRACT_RANGES = {
    ("aot", "epsilon"): "in [0, 0.5]",
    ("aot_unpaired", "epsilon"): "in [0, 0.5]",
    ("bvpo", "alpha"): "in [0, 1]",
    ("cdpo", "epsilon"): "in [0, 0.5]",
    ("cdr", "temperature"): "> 0",
    ("discopop", "tau"): "> 0",
    ("exo_pair", "epsilon"): "in (0, 1)",
    ("inpo", "eta"): "> 0",
    ("inpo", "ratio"): "in [0, 1]",
    ("rdpo", "epsilon"): "in [0, 0.5)",
    ("rpo", "eta"): ">= 0",
    ("vpo", "alpha"): ">= 0",
}


def test_declared_ranges_match_the_contract():
    declared = {
        (name, hyper): str(allowed)
        for name in list_losses()
        for hyper, allowed in get_loss(name).ranges.items()
        if hyper != "beta" and str(allowed)
    }
    assert declared == CONTRACT_RANGES
    assert {str(get_loss(name).ranges["beta"]) for name in list_losses() if "beta" in get_loss(name).hyperparameters} == {"> 0"}


@pytest.mark.parametrize("name", list_losses())
def test_every_numeric_hyperparameter_has_a_range_and_its_default_is_inside(name):
    spec = get_loss(name)
    numeric = {h for h, v in spec.hyperparameters.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(spec.ranges) == numeric
    for hyper in numeric:
        assert spec.hyperparameters[hyper] in spec.ranges[hyper]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("name", [n for n in list_losses() if get_loss(n).ranges])
def test_range_check_accepts_exactly_the_values_inside(name, data):
    spec = get_loss(name)
    hyper = data.draw(st.sampled_from(sorted(spec.ranges)))
    allowed = spec.ranges[hyper]
    value = data.draw(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([v for v in (allowed.low, allowed.high) if v is not None] or [0.0]),
            st.sampled_from(["0.1", True, None]),
        )
    )
    inside = (
        isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)
        and (allowed.low is None or value > allowed.low or (allowed.bounds[0] == "[" and value == allowed.low))
        and (allowed.high is None or value < allowed.high or (allowed.bounds[1] == "]" and value == allowed.high))
    )
    if inside:
        assert spec.resolve_hyperparameters(**{hyper: value})[hyper] == value
    else:
        with pytest.raises(ValueError, match=rf"loss '{name}': {hyper} must be a finite number"):
            spec.resolve_hyperparameters(**{hyper: value})


def test_range_objects_read_as_inequalities():
    assert str(Range(0, 0.5, "[)")) == "in [0, 0.5)" and 0.0 in Range(0, 0.5, "[)") and 0.5 not in Range(0, 0.5, "[)")
    assert str(Range(0, None, "()")) == "> 0" and 0 not in Range(0, None, "()") and 1e-9 in Range(0, None, "()")
    assert str(Range(None, 1, "(]")) == "<= 1" and str(Range(None, None, "()")) == ""
    assert math.inf not in Range(None, None, "()") and "1" not in Range(None, None, "()") and True not in Range(0, 2)


@pytest.mark.parametrize("beta", [0.0, -0.1, math.nan, math.inf, "0.1", True])
@pytest.mark.parametrize("name", [n for n in list_losses() if "beta" in get_loss(n).hyperparameters])
def test_beta_must_be_positive(name, beta):
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0"):
        get_loss(name)(full_batch(get_loss(name)), beta=beta)


def test_choice_hyperparameters_are_checked():
    with pytest.raises(ValueError, match=r"variant must be one of \['sum', 'mean'\], got 'max'"):
        get_loss("rpo")(full_batch(get_loss("rpo")), variant="max")
    with pytest.raises(ValueError, match=r"divergence must be one of"):
        get_loss("fdpg")(full_batch(get_loss("fdpg")), divergence="hellinger")


def test_online_vpo_without_calibration_samples_raises():
    with pytest.raises(ValueError, match=r"mode='online' needs LogProbs.calibration_policy"):
        get_loss("vpo")(pair([[-1.0, -2.0]], [[-1.0, -1.0]]), mode="online")


def test_bvpo_auto_alpha_is_not_a_loss_argument():
    """'auto' is a valid setting (AutoAlphaCallback resolves it every step), not a value the loss computes with."""
    assert get_loss("bvpo").resolve_hyperparameters(alpha="auto")["alpha"] == "auto"
    with pytest.raises(ValueError, match=r"alpha='auto' is estimated every step .*AutoAlphaCallback"):
        get_loss("bvpo")(full_batch(get_loss("bvpo")), alpha="auto")
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0, 1\] or one of \['auto'\], got 'often'"):
        get_loss("bvpo")(full_batch(get_loss("bvpo")), alpha="often")


# --- registering a custom loss --------------------------------------------------------------------


@pytest.fixture
def scratch_name():
    name = "test_margin_squared"
    yield name
    if name in list_losses():
        unregister_loss(name)


def test_custom_loss_with_the_decorator(scratch_name):
    @register_loss(scratch_name, paper="a test", needs_reference=True)
    def margin_squared(batch, *, beta=0.1, target=1.0):
        """(beta h - target)^2."""
        h = (batch.policy[:, 0] - batch.reference[:, 0]) - (batch.policy[:, 1] - batch.reference[:, 1])
        return (beta * h - target) ** 2

    assert scratch_name in list_losses()
    spec = get_loss(scratch_name)
    assert dict(spec.hyperparameters) == {"beta": 0.1, "target": 1.0}
    assert spec.summary == "(beta h - target)^2."
    values = spec(pair([[-1.0, -2.0]], [[-1.5, -1.5]]), beta=1.0, target=0.5)
    torch.testing.assert_close(values, torch.tensor([0.25], dtype=torch.float64))  # (1*1 - 0.5)^2
    with pytest.raises(ValueError, match="already registered"):
        register_loss(scratch_name, paper="again")(margin_squared)
    # a custom loss combines with built-in ones
    combined = combine_losses([("dpo", 1.0), (scratch_name, 2.0)])
    batch = pair([[-1.0, -2.0]], [[-1.5, -1.5]])
    torch.testing.assert_close(combined(batch, beta=1.0), get_loss("dpo")(batch, beta=1.0) + 2 * spec(batch, beta=1.0))


@pytest.mark.parametrize("bad_name", ["DPO", "my-loss", "1dpo", "a__b", "trailing_", "", "dpo "])
def test_names_must_be_lower_snake_case(bad_name):
    with pytest.raises(ValueError, match="lower-case snake_case"):
        register_loss(bad_name, paper="x")


def test_registration_rejects_malformed_functions(scratch_name):
    with pytest.raises(TypeError, match="needs a default"):
        register_loss(scratch_name, paper="x")(lambda batch, *, beta: batch.policy[:, 0])
    with pytest.raises(TypeError, match="keyword-only"):
        register_loss(scratch_name, paper="x")(lambda batch, beta=0.1: batch.policy[:, 0])
    with pytest.raises(ValueError, match="needs a docstring"):
        register_loss(scratch_name, paper="x")(lambda batch: batch.policy[:, 0])
    with pytest.raises(ValueError, match="unknown LogProbs field"):
        register_loss(scratch_name, paper="x", requires=("chosen",))
    with pytest.raises(ValueError, match="responses must be one of"):
        register_loss(scratch_name, paper="x", responses="triple")
    assert scratch_name not in list_losses()


def test_registration_checks_declared_ranges(scratch_name):
    def loss(batch, *, beta=0.1, epsilon=0.6):
        """x."""
        return batch.policy[:, 0]

    with pytest.raises(ValueError, match=r"range is given for 'gamma', which is not a hyper-parameter"):
        register_loss(scratch_name, paper="x", ranges={"gamma": (0, 1, "[]")})(loss)
    with pytest.raises(ValueError, match=r"default epsilon=0.6 is outside its range in \[0, 0.5\)"):
        register_loss(scratch_name, paper="x", ranges={"epsilon": (0, 0.5, "[)")})(loss)
    with pytest.raises(ValueError, match=r"bounds must be one of"):
        register_loss(scratch_name, paper="x", ranges={"epsilon": (0, 1, "[[")})(loss)
    with pytest.raises(ValueError, match=r"must be \(low, high, bounds\)"):
        register_loss(scratch_name, paper="x", ranges={"epsilon": (0, 1)})(loss)
    with pytest.raises(ValueError, match=r"low 1 must be below high 0"):
        register_loss(scratch_name, paper="x", ranges={"epsilon": (1, 0, "[]")})(loss)
    assert scratch_name not in list_losses()
    register_loss(scratch_name, paper="x", ranges={"epsilon": (0, 1, "[)")})(loss)
    assert get_loss(scratch_name).resolve_hyperparameters(epsilon=0.0) == {"beta": 0.1, "epsilon": 0.0}


def test_a_loss_returning_the_wrong_shape_is_caught(scratch_name):
    @register_loss(scratch_name, paper="x")
    def scalar(batch):
        """A mistake: returns the batch mean."""
        return batch.policy.mean()

    with pytest.raises(ValueError, match=r"must return a per-example tensor of shape \[B\]"):
        get_loss(scratch_name)(pair([[-1.0, -2.0]], [[-1.0, -1.0]]))


# --- weighted combinations ------------------------------------------------------------------------


def test_weighted_combination_as_trl_loss_weights():
    batch = full_batch(get_loss("dpo"))
    combined = combine_losses([("dpo", 1.0), ("sft", 0.5)])
    expected = get_loss("dpo")(batch, beta=0.2) + 0.5 * get_loss("sft")(batch)
    torch.testing.assert_close(combined(batch, beta=0.2), expected)
    assert combined.names == ("dpo", "sft")
    assert combined.required_fields == ("policy", "reference", "lengths")
    assert combined.needs_reference and combined.responses == "pair"


def test_combination_forms_and_per_loss_hyperparameters():
    batch = full_batch(get_loss("rpo"))
    by_dict = combine_losses({"dpo": 1.0, "rpo": 0.5})
    by_names = combine_losses(["dpo", "rpo"])
    assert [w for _, w in by_names.components] == [1.0, 1.0]
    values = by_dict(batch, beta=0.3, per_loss={"rpo": {"eta": 0.2}})
    expected = get_loss("dpo")(batch, beta=0.3) + 0.5 * get_loss("rpo")(batch, beta=0.3, eta=0.2)
    torch.testing.assert_close(values, expected)
    assert combine_losses("dpo").names == ("dpo",)


def test_combination_errors():
    batch = full_batch(get_loss("dpo"))
    with pytest.raises(TypeError, match=r"accepted by none of \['dpo', 'sft'\]"):
        combine_losses(["dpo", "sft"])(batch, eta=0.1)
    with pytest.raises(ValueError, match="not in this combination"):
        combine_losses(["dpo"])(batch, per_loss={"rpo": {"eta": 1.0}})
    with pytest.raises(ValueError, match="appears more than once"):
        combine_losses(["dpo", "dpo"])
    with pytest.raises(ValueError, match="finite number"):
        combine_losses([("dpo", math.nan)])
    with pytest.raises(ValueError, match="unknown loss"):
        combine_losses(["dpo", "nope"])
    with pytest.raises(ValueError, match="single-sample"):
        combine_losses(["dpo", "fdpg"])
    with pytest.raises(ValueError, match="at least one"):
        combine_losses([])


def test_a_range_holds_a_per_example_tensor_only_when_every_element_is_finite_and_inside():
    """f-DPG passes log Z as one estimate per example: a tensor is checked element by element."""
    from prefopt.losses import Range

    assert torch.tensor([-1.4, 0.0, 2.0]) in Range(None, None)
    assert torch.tensor([0.0, float("nan")]) not in Range(None, None)
    assert torch.tensor([0.2, 0.5]) not in Range(0, 0.5, "[)")
    assert torch.tensor([0.0, 0.49]) in Range(0, 0.5, "[)")
