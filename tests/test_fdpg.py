"""f-DPG: the log Z estimate and divergence estimates against enumerable toy distributions, and FDPGTrainer on a
tiny model with a programmatic constraint (each divergence raises its satisfaction; resume equals uninterrupted)."""

import math

import pytest
import torch
from transformers import TrainerCallback

from helpers_trainer import config_kwargs, make_model, make_tokenizer
from prefopt import PrefOptConfig
from prefopt.methods.fdpg.state import FDPGState, LogPartitionEstimate
from prefopt.methods.fdpg.trainer import distinct_n
from prefopt.losses.fdpg import pointwise_divergence, pseudo_reward
from prefopt.online import FDPGTrainer
from prefopt.rewards import FunctionReward
from prefopt.training.state import LOSS_STATE_FILE

PROMPTS = [[{"role": "user", "content": text}] for text in ("say", "tell", "please say", "say please")]


def _tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.eos_token = "<|im_end|>"  # the chat template's end of turn: sampling stops where scoring ends
    return tokenizer


def _says_good(prompt, response):
    return "good" in response.split()


# ------------------------------------------------------------------------ enumerable toy distributions

# Five outcomes. Unnormalised target P (outcome 4 violates a constraint: P = 0), proposal q, model pi.
TOY_P = torch.tensor([0.30, 0.05, 0.10, 0.15, 0.0], dtype=torch.float64)
TOY_Q = torch.tensor([0.10, 0.30, 0.20, 0.25, 0.15], dtype=torch.float64)
TOY_PI = torch.tensor([0.40, 0.10, 0.20, 0.20, 0.10], dtype=torch.float64)


def test_log_z_estimate_converges_to_the_exact_value():
    """Z = sum_y P(y) = 0.6 exactly; the IS estimate mean_q[P/q] from samples of q converges to it."""
    exact = math.log(TOY_P.sum().item())
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(TOY_Q, 200_000, replacement=True, generator=generator)
    log_weights = torch.log(TOY_P[samples]) - torch.log(TOY_Q[samples])
    estimate, errors = LogPartitionEstimate(), []
    for chunk in log_weights.split(1000):  # streamed as training batches arrive
        estimate.update("x", chunk)
        errors.append(abs(estimate.log_z("x") - exact))
    assert errors[-1] < 0.01
    assert max(errors[-50:]) < max(errors[:5])
    assert estimate.counts["x"] == 200_000
    one_batch = LogPartitionEstimate()
    one_batch.update("x", log_weights)
    assert one_batch.log_z("x") == pytest.approx(estimate.log_z("x"), abs=1e-9)


def test_log_z_estimate_is_per_prompt_and_survives_huge_weights():
    estimate = LogPartitionEstimate()
    assert math.isnan(estimate.log_z("never seen"))
    estimate.update("a", torch.tensor([500.0, 500.0]))  # e^500 overflows float64; the log-sum does not
    estimate.update("b", torch.tensor([-math.inf, -math.inf]))  # no sample satisfied the constraint yet
    assert estimate.log_z("a") == pytest.approx(500.0)
    assert estimate.log_z("b") == -math.inf
    restored = LogPartitionEstimate()
    restored.load_state_dict(estimate.state_dict())
    assert restored.log_z("a") == estimate.log_z("a") and restored.counts == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="NaN"):
        estimate.update("c", torch.tensor([math.nan]))


def _exact_divergence(divergence):
    p, pi = TOY_P / TOY_P.sum(), TOY_PI
    support = p > 0
    if divergence == "kl":  # KL(p || pi)
        return (p[support] * torch.log(p[support] / pi[support])).sum().item()
    if divergence == "rkl":  # KL(pi || p) restricted to p's support plus pi's mass outside it at log t = 30
        inside = (pi[support] * torch.log(pi[support] / p[support])).sum()
        return (inside + (pi[~support] * 30.0).sum()).item()
    if divergence == "tv":
        return 0.5 * (pi - p).abs().sum().item()
    m = (p + pi) / 2  # js with generator t log(2t/(1+t)) + log(2/(1+t)): KL(pi||m) + KL(p||m)
    kl = lambda a, b: (a[a > 0] * torch.log(a[a > 0] / b[a > 0])).sum()  # noqa: E731
    return (kl(pi, m) + kl(p, m)).item()


@pytest.mark.parametrize("divergence", ["kl", "rkl", "tv", "js"])
def test_pointwise_divergence_is_an_unbiased_estimate_of_the_exact_divergence(divergence):
    """Averaged exactly over q (sum_y q(y) * term(y)), the importance-sampling terms give D_f(pi || p)."""
    log_p = torch.log(TOY_P / TOY_P.sum())  # -inf for the outcome outside the support
    terms = pointwise_divergence(torch.log(TOY_PI), log_p, torch.log(TOY_Q), divergence)
    assert (TOY_Q * terms).sum().item() == pytest.approx(_exact_divergence(divergence), rel=1e-9, abs=1e-12)


def test_pseudo_rewards_are_finite_outside_the_target_support():
    log_t = torch.tensor([math.inf, 0.0, -1.0])
    assert bool(torch.isfinite(pseudo_reward(log_t, "rkl")).all())
    assert pseudo_reward(log_t, "kl").tolist() == pytest.approx([math.exp(-30), 1.0, math.e])
    assert pseudo_reward(log_t, "tv").tolist() == [-0.5, 0.0, 0.5]


def test_distinct_n_counts_unique_ngrams():
    texts = ["good good bad", "good bad"]
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)  # (good good), (good bad), (good bad)
    assert distinct_n([""], 2) == 0.0


def test_baseline_is_a_windowed_moving_average():
    state = FDPGState(baseline_window=3)
    assert state.baseline == 0.0
    state.add_rewards(torch.tensor([1.0, 2.0]))
    state.add_rewards(torch.tensor([3.0, 4.0]))
    assert state.baseline == pytest.approx(3.0)  # the last three: 2, 3, 4


# -------------------------------------------------------------------------------- trainer, tiny model


def _trainer(tmp_path, divergence="js", steps=3, *, target="constraint", proposal=None, callbacks=None, **overrides):
    options = dict(samples_per_prompt=4, max_new_tokens=4)
    options.update(overrides)
    if target == "constraint":
        options.setdefault("constraint", _says_good)
    settings = config_kwargs(tmp_path, max_steps=steps, learning_rate=1e-2, lr_scheduler_type="constant")
    settings.update(options.pop("settings", {}))
    return FDPGTrainer(make_model(), _tokenizer(), PROMPTS * 4, target=target, proposal=proposal, callbacks=callbacks,
                       args=PrefOptConfig(loss="fdpg", loss_kwargs={"divergence": divergence}, **settings), **options)


def _logs(trainer):
    return [log for log in trainer.state.log_history if "fdpg/divergence" in log]


@pytest.mark.slow
@pytest.mark.parametrize("divergence", ["kl", "rkl", "tv", "js"])
def test_each_divergence_raises_constraint_satisfaction(tmp_path, divergence):
    trainer = _trainer(tmp_path, divergence, steps=24)
    trainer.train()
    satisfaction = [log["fdpg/constraint_satisfaction"] for log in _logs(trainer)]
    first, last = sum(satisfaction[:6]) / 6, sum(satisfaction[-6:]) / 6
    assert last > first + 0.2, f"{divergence}: satisfaction {satisfaction}"
    for log in _logs(trainer):
        for key in ("fdpg/kl_to_reference", "fdpg/distinct_1", "fdpg/distinct_2", "fdpg/entropy", "fdpg/log_z", "fdpg/baseline"):
            assert math.isfinite(log[key]), key


def test_the_first_step_samples_from_the_reference_and_estimates_its_satisfaction(tmp_path):
    """At step 1 q = pi = pi_ref, so P/q = b(y): the log Z of each prompt is log(share of its samples with "good"),
    the KL to the reference is 0 and every importance weight is 1."""
    trainer = _trainer(tmp_path, steps=1, settings={"learning_rate": 0.0})
    trainer.train()
    (log,) = _logs(trainer)
    assert log["fdpg/kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert log["fdpg/importance_weight"] == pytest.approx(1.0)
    estimate = trainer.fdpg_state.log_partition
    seen = sum(estimate.counts.values())
    assert seen == 4 * 4  # 4 prompts per step x 4 samples
    shares = [math.exp(estimate.log_z(key)) * estimate.counts[key] for key in estimate.counts]
    assert all(abs(share - round(share)) < 1e-6 for share in shares)  # counts of satisfying samples
    assert sum(round(share) for share in shares) / seen == pytest.approx(log["fdpg/constraint_satisfaction"])


def test_rlhf_target_is_the_reference_tilted_by_the_reward(tmp_path):
    trainer = _trainer(tmp_path, target="rlhf", reward=FunctionReward(lambda prompt, text: text.count("good")), beta=0.5)
    reference = torch.tensor([-1.0, -2.0])
    log_target, values = trainer._log_target(PROMPTS[:2], ["good good", "bad"], reference)
    assert values.tolist() == [2.0, 0.0]
    assert log_target.tolist() == pytest.approx([-1.0 + 2.0 / 0.5, -2.0])
    trainer.train()
    assert all("fdpg/reward" in log for log in _logs(trainer))


def test_constructor_errors_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="needs a reward callable"):
        _trainer(tmp_path, target="rlhf")
    with pytest.raises(ValueError, match="needs constraint"):
        FDPGTrainer(make_model(), _tokenizer(), PROMPTS, target="constraint")
    with pytest.raises(ValueError, match="one of"):
        _trainer(tmp_path, target="gdc")
    with pytest.raises(ValueError, match="trains the 'fdpg' loss alone"):
        FDPGTrainer(make_model(), _tokenizer(), PROMPTS, target="constraint", constraint=_says_good,
                    args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path)))
    with pytest.raises(ValueError, match=r"rows \[1\]: 'prompt' must be"):
        FDPGTrainer(make_model(), _tokenizer(), ["say", ""], target="constraint", constraint=_says_good,
                    args=PrefOptConfig(loss="fdpg", **config_kwargs(tmp_path)))


def test_proposal_is_replaced_when_the_policy_is_closer_to_the_target(tmp_path):
    proposal = make_model(seed=1)
    trainer = _trainer(tmp_path, proposal=proposal, proposal_update_every=2)
    normalised, log_q = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -3.0])
    trainer.state.global_step = 0  # step 1 of 2: accumulate only
    trainer._track_proposal(normalised, log_q, torch.tensor([5.0, 5.0]))  # policy farther than q this step
    assert trainer.fdpg_state.proposal_updates == 0
    trainer.state.global_step = 1  # step 2: compare the means over both steps
    far_terms = pointwise_divergence(log_q, normalised, log_q, "kl")
    trainer._track_proposal(normalised, log_q, far_terms - 20.0)
    assert trainer.fdpg_state.proposal_updates == 1
    for proposal_parameter, policy_parameter in zip(trainer.proposal.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(proposal_parameter, policy_parameter)
    assert trainer.fdpg_state.policy_divergence == [0.0, 0]  # accumulators restart after each comparison


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Killed


@pytest.mark.slow
def test_resume_equals_the_uninterrupted_run(tmp_path):
    """A proposal model (updated every 2 steps) so that every piece of state matters: log Z, baseline, proposal."""
    total, checkpoint_step = 4, 2

    def run(name, kill_at=None, resume_from=None):
        callbacks = [_KillAt(kill_at)] if kill_at else []
        trainer = _trainer(tmp_path / name, "js", steps=total, proposal=make_model(seed=1), proposal_update_every=1,
                           callbacks=callbacks, settings={"save_strategy": "steps", "save_steps": checkpoint_step})
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        except _Killed:
            pass
        return trainer

    full = run("full")
    run("killed", kill_at=checkpoint_step)
    checkpoint = tmp_path / "killed" / "out" / f"checkpoint-{checkpoint_step}"
    assert (checkpoint / LOSS_STATE_FILE).exists()
    resumed = run("resumed", resume_from=str(checkpoint))
    full_logs, resumed_logs = {log["step"]: log for log in _logs(full)}, {log["step"]: log for log in _logs(resumed)}
    assert sorted(resumed_logs) == list(range(1, total + 1))
    for step in range(checkpoint_step + 1, total + 1):
        for key in ("loss", "fdpg/divergence", "fdpg/log_z", "fdpg/baseline", "fdpg/proposal_updates"):
            assert resumed_logs[step][key] == pytest.approx(full_logs[step][key], abs=1e-6), (step, key)
    for full_parameter, resumed_parameter in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(resumed_parameter, full_parameter, atol=1e-6, rtol=0)
    for full_parameter, resumed_parameter in zip(full.proposal.parameters(), resumed.proposal.parameters(), strict=True):
        torch.testing.assert_close(resumed_parameter, full_parameter, atol=1e-6, rtol=0)
    full_estimate, resumed_estimate = full.fdpg_state.log_partition, resumed.fdpg_state.log_partition
    assert resumed_estimate.counts == full_estimate.counts
    for key, log_sum in full_estimate.log_sums.items():
        assert resumed_estimate.log_sums[key] == pytest.approx(log_sum, abs=1e-6)
    assert list(resumed.fdpg_state.rewards) == pytest.approx(list(full.fdpg_state.rewards), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rlhf", "constraint"])
def test_fdpg_command_trains_a_lora_adapter_and_prints_the_metrics(tmp_path, target, capsys):
    import json

    from helpers_models import save_tiny_checkpoint
    from prefopt.cli import main as cli

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {a} + 1?"}) + "\n" for a in range(3)))
    extra = ["--task", "arithmetic"] if target == "rlhf" else ["--constraint", "regex:[0-9]"]
    cli.main(["fdpg", "--prompts", str(prompts), "--model", str(checkpoint), "--target", target, *extra, "--steps", "2",
              "--samples-per-prompt", "2", "--max-new-tokens", "4", "--output-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    metric = "fdpg/reward" if target == "rlhf" else "fdpg/constraint_satisfaction"
    assert metric in out and "fdpg/divergence" in out and "saved to" in out
    assert (tmp_path / "out" / "adapter_config.json").exists()


def test_fdpg_command_refuses_an_unknown_constraint(tmp_path):
    from prefopt.cli.common import UserError
    from prefopt.cli.fdpg import run as main

    with pytest.raises(UserError, match="'task' or 'regex:PATTERN'"):
        main(["--target", "constraint", "--constraint", "contains good", "--prompts", "arithmetic"])
