"""Over-optimisation: dpo against rpo (DPO + an SFT term on the chosen response) as training goes on.

Reproduction target (LOSSES.md; Liu et al. 2024, arXiv:2405.16436): the SFT term limits
over-optimisation; the policy drifts less from the chosen responses, and its true reward does not
collapse when training runs long on limited preference data.

Setting: a log-linear policy over a fixed set of candidate responses per prompt, built so that the
preference data does not cover everything the policy can say. Each prompt has TYPICAL responses
(what the reference usually says; the preference pairs are drawn from them) and ATYPICAL responses
(reference log-probability ATYPICAL_REFERENCE_LOGIT lower each, never in the data). Features
phi(x, y) in R^(COMMON_DIM + RARE_DIM): typical responses vary little along the RARE_DIM "rare"
directions (std TYPICAL_RARE_STD), atypical ones vary fully. The true reward r* = w* . phi involves
every direction. The policy is pi_theta(y|x) proportional to pi_ref(y|x) exp(theta . phi(x, y))
(theta = 0 is the reference). One Bradley-Terry labelled pair per training prompt, TRAIN_PROMPTS
prompts, full-batch Adam for STEPS steps; losses are called through the registry on `LogProbs`.

The data pins w* down along the common directions only. Once the pairs are fitted, DPO keeps
raising their margins along whatever direction still helps, including the rare ones where the data
says almost nothing; atypical responses, large along those directions, then take the policy's mass
whatever their true reward. RPO's SFT term, eta * beta * (-log pi(y_chosen)), charges for any mass
that leaves the chosen responses.

Curves over training steps, mean and 95% t-interval over seeds, per method:
  - expected true reward E_{y ~ pi_theta}[r*(x, y)] on held-out prompts
  - mean log pi_theta(y_chosen | x) on the training pairs
  - policy mass on atypical (never-seen) responses, and KL(pi_theta || pi_ref), on held-out prompts
Writes rpo_overoptimisation.{json,md,png} to benchmarks/results/ (or --output). About a minute on 2 CPU cores.
"""

import time

import torch

from _reporting import ZERO, environment, format_interval, interval, parse_arguments, pyplot, settings, versus, write
from prefopt.losses import LogProbs, get_loss

# --- settings ----------------------------------------------------------------------------------
# label -> (registered loss, hyper-parameters). eta weighs the SFT term as eta * beta * NLL; 0.005 is
# the package default, tuned for LLM sequence log-probs summed over hundreds of tokens.
METHODS = {
    "dpo": ("dpo", {}),
    "rpo eta=0.005": ("rpo", {"eta": 0.005}),
    "rpo eta=0.05": ("rpo", {"eta": 0.05}),
    "rpo eta=0.2": ("rpo", {"eta": 0.2}),
    "rpo eta=1": ("rpo", {"eta": 1.0}),
}
COMMON_DIM = 4
RARE_DIM = 4
TYPICAL = 4  # responses per prompt the preference pairs are drawn from
ATYPICAL = 12  # responses per prompt never seen in the data
TYPICAL_RARE_STD = 0.1  # how little typical responses vary along the rare directions
ATYPICAL_REFERENCE_LOGIT = -2.0  # reference logit of an atypical response relative to a typical one
TRUE_REWARD_SCALE = 2.0  # |w*|
TRAIN_PROMPTS = 50  # one labelled pair each: a limited preference dataset
TEST_PROMPTS = 500
SEEDS = list(range(10))
BETA = 0.1
STEPS = 1500
EVALUATE_EVERY = 25
LEARNING_RATE = 0.05
TABLE_STEPS = [0, 50, 100, 200, 500, 1000, 1500]
SMOKE = {"TRAIN_PROMPTS": 10, "TEST_PROMPTS": 20, "SEEDS": [0, 1], "STEPS": 20, "EVALUATE_EVERY": 10,
         "TABLE_STEPS": [0, 20]}


def make_features(prompts, generator):
    features = torch.randn(prompts, TYPICAL + ATYPICAL, COMMON_DIM + RARE_DIM, generator=generator)
    features[:, :TYPICAL, COMMON_DIM:] *= TYPICAL_RARE_STD
    return features


def make_task(seed):
    generator = torch.Generator().manual_seed(seed)
    true_weights = torch.randn(COMMON_DIM + RARE_DIM, generator=generator)
    true_weights = TRUE_REWARD_SCALE * true_weights / true_weights.norm()
    train_features, test_features = make_features(TRAIN_PROMPTS, generator), make_features(TEST_PROMPTS, generator)
    first, second = torch.stack([torch.randperm(TYPICAL, generator=generator)[:2] for _ in range(TRAIN_PROMPTS)]).T
    prompts = torch.arange(TRAIN_PROMPTS)
    reward_gap = (train_features[prompts, first] - train_features[prompts, second]) @ true_weights
    first_preferred = torch.rand(TRAIN_PROMPTS, generator=generator) < torch.sigmoid(reward_gap)
    pairs = torch.stack([torch.where(first_preferred, first, second), torch.where(first_preferred, second, first)], dim=1)
    return true_weights, train_features, test_features, pairs


def reference_log_probs():
    logits = torch.cat([torch.zeros(TYPICAL), torch.full((ATYPICAL,), ATYPICAL_REFERENCE_LOGIT)])
    return torch.log_softmax(logits, dim=0)


def evaluate(theta, true_weights, train_features, test_features, pairs):
    reference = reference_log_probs()
    log_policy = torch.log_softmax(reference + test_features @ theta, dim=-1)  # [P, N]
    policy = log_policy.exp()
    train_log_policy = torch.log_softmax(reference + train_features @ theta, dim=-1)
    return {
        "expected_true_reward": float((policy * (test_features @ true_weights)).sum(-1).mean()),
        "chosen_log_likelihood": float(train_log_policy.gather(1, pairs[:, :1]).mean()),
        "atypical_mass": float(policy[:, TYPICAL:].sum(-1).mean()),
        "kl_to_reference": float((policy * (log_policy - reference)).sum(-1).mean()),
    }


METRICS = ("expected_true_reward", "chosen_log_likelihood", "atypical_mass", "kl_to_reference")


def train(loss_name, hyperparameters, true_weights, train_features, test_features, pairs):
    """Full-batch Adam on the training pairs; the metrics every EVALUATE_EVERY steps."""
    spec = get_loss(loss_name)
    theta = torch.zeros(COMMON_DIM + RARE_DIM, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=LEARNING_RATE)
    reference = reference_log_probs().expand(TRAIN_PROMPTS, -1)
    curve = []
    for step in range(STEPS + 1):
        if step % EVALUATE_EVERY == 0:
            with torch.no_grad():
                metrics = evaluate(theta, true_weights, train_features, test_features, pairs)
                curve.append({"step": step, **{name: round(value, 5) for name, value in metrics.items()}})  # a smaller JSON
        if step == STEPS:
            break
        log_probs = torch.log_softmax(reference + train_features @ theta, dim=-1)
        batch = LogProbs(policy=log_probs.gather(1, pairs), reference=reference.gather(1, pairs))
        loss = spec(batch, beta=BETA, **hyperparameters).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{loss_name} {hyperparameters}: loss {float(loss)} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return curve


def main(argv=None):
    arguments = parse_arguments(__doc__, argv)
    if arguments.smoke:
        globals().update(SMOKE)
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only add contention
    started = time.time()
    runs, optimum = [], []
    for seed in SEEDS:
        true_weights, train_features, test_features, pairs = make_task(seed)
        # the KL-regularised optimum at this beta: pi_ref * exp(r*/beta), i.e. theta = w*/beta
        optimum.append(evaluate(true_weights / BETA, true_weights, train_features, test_features, pairs)["expected_true_reward"])
        for label, (loss_name, hyperparameters) in METHODS.items():
            curve = train(loss_name, hyperparameters, true_weights, train_features, test_features, pairs)
            runs.append({"method": label, "seed": seed, "curve": curve})

    steps = [point["step"] for point in runs[0]["curve"]]
    curves = {}
    for label in METHODS:
        method_runs = [r["curve"] for r in runs if r["method"] == label]
        curves[label] = {metric: [interval([curve[index][metric] for curve in method_runs]) for index in range(len(steps))]
                         for metric in METRICS}
    summary = []
    dpo_runs = [r["curve"] for r in runs if r["method"] == "dpo"]
    for label in METHODS:
        method_runs = [r["curve"] for r in runs if r["method"] == label]
        rewards = [[point["expected_true_reward"] for point in curve] for curve in method_runs]
        summary.append({
            "method": label,
            **{f"final_{metric}": interval([curve[-1][metric] for curve in method_runs]) for metric in METRICS},
            # per seed: the best point on its curve (what oracle early stopping would keep) and the fall from it
            "peak_expected_true_reward": interval([max(r) for r in rewards]),
            "drop_from_peak": interval([max(r) - r[-1] for r in rewards]),
            # paired over seeds (every method trains on the same data): final true reward minus dpo's
            "final_reward_minus_dpo": interval([curve[-1]["expected_true_reward"] - baseline[-1]["expected_true_reward"]
                                                for curve, baseline in zip(method_runs, dpo_runs)]),
        })
    row = {r["method"]: r for r in summary}

    record = {"settings": settings(globals()), "environment": environment(started),
              "optimum_expected_true_reward": interval(optimum), "steps": steps, "curves": curves,
              "summary": summary,
              # per seed, one list per metric over `steps` (columns keep the file small)
              "runs": [{"method": r["method"], "seed": r["seed"], **{m: [point[m] for point in r["curve"]] for m in METRICS}}
                       for r in runs]}
    optimum_reward = record["optimum_expected_true_reward"]["mean"]
    table_steps = [s for s in TABLE_STEPS if s in steps]
    lines = [
        f"Expected true reward on held-out prompts as training goes on, mean [95% t-interval] over {len(SEEDS)} seeds "
        f"(optimum pi_ref * exp(r*/beta) at beta = {BETA}: {optimum_reward:.2f}; the reference is step 0):",
        "",
        "| step | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for step in table_steps:
        index = steps.index(step)
        lines.append(f"| {step} | " + " | ".join(
            format_interval(curves[m]["expected_true_reward"][index], 2) for m in METHODS) + " |")
    lines += ["", f"After {steps[-1]} steps, and each seed's best point on its curve:", "",
              "| method | final true reward | peak true reward | drop from peak | log pi(chosen) | "
              "mass on unseen responses | KL(pi || pi_ref) |", "|---|---|---|---|---|---|---|"]
    for label in METHODS:
        cells = row[label]
        lines.append(f"| {label} | " + " | ".join(format_interval(cells[key], 2) for key in (
            "final_expected_true_reward", "peak_expected_true_reward", "drop_from_peak", "final_chosen_log_likelihood",
            "final_atypical_mass", "final_kl_to_reference")) + " |")
    lines += ["", "Against dpo (95% intervals; the final-reward difference is paired over seeds, which share the data):", ""]
    dpo_drop, dpo_peak = row["dpo"]["drop_from_peak"], row["dpo"]["peak_expected_true_reward"]
    for label in list(METHODS)[1:]:
        difference = row[label]["final_reward_minus_dpo"]
        lines.append(f"- {label}: final true reward minus dpo's {format_interval(difference, 2)} ({versus(difference, ZERO, 'zero')}); "
                     f"drop from peak {versus(row[label]['drop_from_peak'], dpo_drop, 'dpo')}; "
                     f"final true reward {versus(row[label]['final_expected_true_reward'], dpo_peak, 'dpo at its peak')}.")
    lines += ["", f"Environment: {record['environment']}"]
    write(arguments.output, "rpo_overoptimisation", record, lines)

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("expected_true_reward", "expected true reward (held-out)"),
              ("chosen_log_likelihood", "log pi(chosen) (training pairs)"), ("atypical_mass", "mass on unseen responses"))
    for axis, (metric, label) in zip(axes, panels):
        for method in METHODS:
            cells = curves[method][metric]
            axis.plot(steps, [c["mean"] for c in cells], label=method)
            if cells[0]["low"] is not None:
                axis.fill_between(steps, [c["low"] for c in cells], [c["high"] for c in cells], alpha=0.2)
        axis.set_xlabel("training step")
        axis.set_ylabel(label)
    axes[0].axhline(optimum_reward, color="gray", linestyle=":", label="optimum")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Over-optimisation on limited preference data: dpo vs rpo (95% intervals, {len(SEEDS)} seeds)")
    figure.tight_layout()
    figure.savefig(arguments.output / "rpo_overoptimisation.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
