"""Label-noise robustness of dpo, cdpo and rdpo on a task with a known ground-truth reward.

Reproduction target (LOSSES.md, Chowdhury et al. 2024): under random label flips, rDPO's policy
degrades less than DPO's and cDPO's as the flip rate eps grows.

Setting: the paper's own log-linear model. Each prompt has N_RESPONSES candidate responses with
features phi(x, y) in R^DIM; the policy is pi_theta(y|x) = softmax_y(theta . phi(x, y)), the
reference is theta = 0 (uniform), and the true reward is r*(x, y) = w* . phi(x, y). Training pairs
are labelled by the Bradley-Terry model of r*, then each label is flipped with probability eps
(the flips are recorded). cdpo and rdpo run twice: told the true eps, and with eps estimated the
way a user would, by `prefopt.data.estimate_flip_rate` on a small trusted subset (TRUSTED_PROMPTS
training pairs whose pre-flip labels are known). Every loss is called through the prefopt registry
on `LogProbs` batches, exactly as the trainer calls it.

Reported on held-out prompts, per method and eps (mean and 95% t-interval over seeds):
  - expected true reward of the policy  E_{y ~ pi_theta}[r*(x, y)]   (higher is better)
  - preference accuracy of the implicit reward theta . phi against r* on all response pairs
  - cosine(theta, w*), and |theta| / |w*/beta| (the scale of the learned reward relative to the
    KL-regularised optimum pi_ref * exp(r*/beta); a policy can beat the optimum's expected reward
    only by being sharper than beta allows, i.e. by overshooting this scale)
  - the estimated eps, with estimate_flip_rate's Clopper-Pearson interval
Writes noise_robustness.{json,md,png} to benchmarks/results/ (or --output). About a minute on 2 CPU cores.
"""

import time

import torch

from _reporting import environment, format_interval, interval, parse_arguments, pyplot, settings, versus, write
from prefopt.data import estimate_flip_rate
from prefopt.losses import LogProbs, get_loss

# --- settings ----------------------------------------------------------------------------------
# label -> (registered loss, hyper-parameters); "true eps" = the flip rate used, "estimated eps" =
# estimate_flip_rate on the trusted subset
METHODS = {
    "dpo": ("dpo", {}),
    "cdpo": ("cdpo", {"epsilon": "true eps"}),
    "rdpo": ("rdpo", {"epsilon": "true eps"}),
    "cdpo (estimated eps)": ("cdpo", {"epsilon": "estimated eps"}),
    "rdpo (estimated eps)": ("rdpo", {"epsilon": "estimated eps"}),
}
FLIP_RATES = [0.0, 0.1, 0.2, 0.3, 0.4]
SEEDS = [0, 1, 2, 3, 4]
DIM = 8
N_RESPONSES = 8
TRAIN_PROMPTS = 2000
TEST_PROMPTS = 500
TRUE_REWARD_SCALE = 1.0  # |w*|; BT labels are informative but not deterministic
BETA = 1.0
STEPS = 400
BATCH_SIZE = 256
LEARNING_RATE = 0.05
TRUSTED_PROMPTS = 100  # training pairs with known clean labels (5% of the data)
MAX_EPSILON = 0.49  # rdpo refuses eps >= 0.5; a larger estimate is clipped here and counted
SMOKE = {"SEEDS": [0, 1], "FLIP_RATES": [0.0, 0.3], "STEPS": 30, "TRAIN_PROMPTS": 200, "TEST_PROMPTS": 50,
         "TRUSTED_PROMPTS": 40}


def make_task(seed):
    generator = torch.Generator().manual_seed(seed)
    true_weights = torch.randn(DIM, generator=generator)
    true_weights = TRUE_REWARD_SCALE * true_weights / true_weights.norm()
    train_features = torch.randn(TRAIN_PROMPTS, N_RESPONSES, DIM, generator=generator)
    test_features = torch.randn(TEST_PROMPTS, N_RESPONSES, DIM, generator=generator)
    # one labelled pair per training prompt, labelled by Bradley-Terry on the true reward
    first, second = torch.stack([torch.randperm(N_RESPONSES, generator=generator)[:2] for _ in range(TRAIN_PROMPTS)]).T
    prompts = torch.arange(TRAIN_PROMPTS)
    reward_gap = (train_features[prompts, first] - train_features[prompts, second]) @ true_weights
    first_preferred = torch.rand(TRAIN_PROMPTS, generator=generator) < torch.sigmoid(reward_gap)
    chosen = torch.where(first_preferred, first, second)
    rejected = torch.where(first_preferred, second, first)
    return true_weights, train_features, test_features, chosen, rejected, generator


def flip(chosen, rejected, rate, generator):
    flipped = torch.rand(chosen.shape[0], generator=generator) < rate
    return torch.where(flipped, rejected, chosen), torch.where(flipped, chosen, rejected), flipped


def estimate_epsilon(chosen, rejected, noisy_chosen, noisy_rejected, trusted_prompts):
    """estimate_flip_rate on rows as a user has them: the noisy data, and the trusted prompts' clean labels."""
    def row(prompt, preferred, other):
        return {"prompt": f"prompt {prompt}", "chosen": f"response {preferred}", "rejected": f"response {other}"}
    noisy = [row(prompt, c, r) for prompt, (c, r) in enumerate(zip(noisy_chosen.tolist(), noisy_rejected.tolist()))]
    trusted = [row(prompt, int(chosen[prompt]), int(rejected[prompt])) for prompt in trusted_prompts.tolist()]
    return estimate_flip_rate(noisy, trusted)


def train(loss_name, hyperparameters, features, chosen, rejected, seed):
    spec = get_loss(loss_name)
    theta = torch.zeros(DIM, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed + 1000)
    for _ in range(STEPS):
        rows = torch.randint(0, features.shape[0], (BATCH_SIZE,), generator=generator)
        log_probs = torch.log_softmax(features[rows] @ theta, dim=-1)  # [B, N_RESPONSES]
        reference = torch.full_like(log_probs, -torch.log(torch.tensor(float(N_RESPONSES))))
        pairs = torch.stack([chosen[rows], rejected[rows]], dim=1)
        batch = LogProbs(policy=log_probs.gather(1, pairs), reference=reference.gather(1, pairs))
        loss = spec(batch, beta=BETA, **hyperparameters).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return theta.detach()


def evaluate(theta, true_weights, features):
    true_reward = features @ true_weights  # [P, N]
    policy = torch.softmax(features @ theta, dim=-1)
    implicit = features @ theta
    upper = torch.triu_indices(N_RESPONSES, N_RESPONSES, offset=1)
    agree = (implicit[:, upper[0]] - implicit[:, upper[1]]).sign() == (true_reward[:, upper[0]] - true_reward[:, upper[1]]).sign()
    return {
        "expected_true_reward": float((policy * true_reward).sum(-1).mean()),
        "preference_accuracy": float(agree.float().mean()),
        "cosine_to_true_reward": float(torch.nn.functional.cosine_similarity(theta, true_weights, dim=0)),
        # 1.0 = the KL-regularised optimum's scale; above 1 the policy is sharper than beta allows
        "scale_vs_optimum": float(theta.norm() / (true_weights / BETA).norm()),
    }


METRICS = ("expected_true_reward", "preference_accuracy", "cosine_to_true_reward", "scale_vs_optimum")


def main(argv=None):
    arguments = parse_arguments(__doc__, argv)
    if arguments.smoke:
        globals().update(SMOKE)
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only add contention
    started = time.time()
    runs, estimates = [], []
    for seed in SEEDS:
        true_weights, train_features, test_features, chosen, rejected, generator = make_task(seed)
        # its own generator, so the flips (and the true-eps runs) do not depend on TRUSTED_PROMPTS
        trusted_prompts = torch.randperm(TRAIN_PROMPTS, generator=torch.Generator().manual_seed(seed + 2000))[:TRUSTED_PROMPTS]
        for rate in FLIP_RATES:
            noisy_chosen, noisy_rejected, flipped = flip(chosen, rejected, rate, generator)
            estimate = estimate_epsilon(chosen, rejected, noisy_chosen, noisy_rejected, trusted_prompts)
            estimated = min(estimate.rate, MAX_EPSILON)
            estimates.append({"flip_rate": rate, "seed": seed, "observed_flip_rate": float(flipped.float().mean()),
                              "estimate": estimate.rate, "low": estimate.low, "high": estimate.high,
                              "compared": estimate.compared, "clipped": estimate.rate > MAX_EPSILON})
            for label, (loss_name, template) in METHODS.items():
                values = {"true eps": rate, "estimated eps": estimated}
                hyperparameters = {name: values.get(value, value) for name, value in template.items()}
                theta = train(loss_name, hyperparameters, train_features, noisy_chosen, noisy_rejected, seed)
                runs.append({"method": label, "flip_rate": rate, "seed": seed, **hyperparameters,
                             **evaluate(theta, true_weights, test_features)})
    # the best achievable policy at this beta: theta = w* / beta (pi_ref * exp(r*/beta))
    optimum = []
    for seed in SEEDS:
        true_weights, _, test_features, *_ = make_task(seed)
        optimum.append(evaluate(true_weights / BETA, true_weights, test_features)["expected_true_reward"])

    summary = []
    for label in METHODS:
        for rate in FLIP_RATES:
            cell = [r for r in runs if r["method"] == label and r["flip_rate"] == rate]
            summary.append({"method": label, "flip_rate": rate, **{m: interval([r[m] for r in cell]) for m in METRICS}})
    estimate_summary = [{"flip_rate": rate, "estimate": interval([e["estimate"] for e in estimates if e["flip_rate"] == rate]),
                         "clipped": sum(e["clipped"] for e in estimates if e["flip_rate"] == rate)} for rate in FLIP_RATES]
    cell = lambda label, rate: next(r for r in summary if r["method"] == label and r["flip_rate"] == rate)  # noqa: E731

    record = {"settings": settings(globals()), "environment": environment(started),
              "optimum_expected_true_reward": interval(optimum), "summary": summary,
              "epsilon_estimates": estimate_summary, "runs": runs, "estimates": estimates}
    optimum_reward = record["optimum_expected_true_reward"]["mean"]

    def table(metric, digits):
        rows = ["| flip rate | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
        for rate in FLIP_RATES:
            rows.append(f"| {rate:.1f} | " + " | ".join(format_interval(cell(m, rate)[metric], digits) for m in METHODS) + " |")
        return rows

    lines = [f"Expected true reward of the learned policy on held-out prompts, mean [95% t-interval] over {len(SEEDS)} seeds "
             f"(optimum at beta={BETA}: {optimum_reward:.3f}; uniform reference: 0):", "", *table("expected_true_reward", 3)]
    lines += ["", f"eps estimated by estimate_flip_rate from {TRUSTED_PROMPTS} trusted pairs (mean [95% t-interval] over seeds; "
              f"estimates above {MAX_EPSILON} clipped to it):", "", "| flip rate | estimated eps | clipped |", "|---|---|---|"]
    for row in estimate_summary:
        lines.append(f"| {row['flip_rate']:.1f} | {format_interval(row['estimate'])} | {row['clipped']} |")
    lines += ["", "Preference accuracy of the implicit reward against the true reward (held-out, all pairs):", "",
              *table("preference_accuracy", 3)]
    lines += ["", "Scale of the learned reward relative to the optimum's, |theta| / |w*/beta| (1 = unbiased; "
              "below 1 the label noise shrank the reward, above 1 the estimate overshoots):", "", *table("scale_vs_optimum", 2)]
    lines += ["", "Verdicts on expected true reward (95% intervals over seeds):", ""]
    for rate in FLIP_RATES[1:]:
        rdpo = cell("rdpo", rate)["expected_true_reward"]
        lines.append(f"- eps = {rate:.1f}: rdpo {versus(rdpo, cell('dpo', rate)['expected_true_reward'], 'dpo')}, "
                     f"{versus(rdpo, cell('cdpo', rate)['expected_true_reward'], 'cdpo')}; rdpo with estimated eps "
                     f"{versus(cell('rdpo (estimated eps)', rate)['expected_true_reward'], rdpo, 'rdpo with the true eps')}.")
    lines += ["", f"Environment: {record['environment']}"]
    write(arguments.output, "noise_robustness", record, lines)

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for label in METHODS:
        cells = [cell(label, rate)["expected_true_reward"] for rate in FLIP_RATES]
        means = [c["mean"] for c in cells]
        errors = None if cells[0]["low"] is None else [[c["mean"] - c["low"] for c in cells], [c["high"] - c["mean"] for c in cells]]
        axis.errorbar(FLIP_RATES, means, yerr=errors, marker="o", capsize=3, label=label,
                      linestyle="--" if "estimated" in label else "-")
    axis.axhline(optimum_reward, color="gray", linestyle=":", label="optimum")
    axis.set_xlabel("label flip rate eps")
    axis.set_ylabel("expected true reward (held-out)")
    axis.set_title(f"Robustness to random label flips (95% intervals, {len(SEEDS)} seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(arguments.output / "noise_robustness.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
