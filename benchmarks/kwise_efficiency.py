"""K-wise efficiency: plackett_luce on whole rankings against dpo on rankings split into pairs, as prompts grow.

Reproduction target (LOSSES.md; Zhu, Jiao, Jordan 2023, arXiv:2301.11270): with K-wise rankings the
full Plackett-Luce MLE is more sample-efficient than splitting each ranking into pairs, and both
converge to the true reward.

Setting: the log-linear model of noise_robustness.py. Each prompt has K = 4 responses with features
phi(x, y) in R^DIM; the policy is pi_theta(y|x) = softmax_y(theta . phi(x, y)), the reference is
uniform, the true reward is r*(x, y) = w* . phi(x, y). Each training prompt comes with one ranking of
its K responses drawn from the Plackett-Luce model of r* (sort r* + Gumbel noise), so every method
sees exactly the same rankings. `plackett_luce` trains on the ranked list; the other methods split
each ranking with `prefopt.data.to_pairs` (`all_pairs`: 6 pairs, `best_vs_rest`: 3, `best_vs_worst`:
1) and train `dpo` on the pairs. The prompt sets are nested: the first n prompts of one draw. Every
run gets the same full-batch Adam budget. Losses are called through the registry on `LogProbs`.

Under Plackett-Luce, P(y_i ranked above y_j) = sigma(r_i - r_j) exactly (independent Gumbel noise),
so `all_pairs` fits a correctly specified pairwise marginal and converges; `best_vs_rest` and
`best_vs_worst` keep only pairs selected by the ranking's extremes, whose labels are not
Bradley-Terry distributed, so dpo on them is expected to converge to a biased theta.

Reported on held-out prompts, per method and number of training prompts, mean and 95% t-interval
over seeds (and paired over seeds against plackett_luce, which sees the same data):
  - parameter error |theta - w*/beta| / |w*/beta|  (the KL-regularised optimum is theta = w*/beta)
  - expected true reward of the policy E_{y ~ pi_theta}[r*(x, y)]
  - ranking agreement: mean Kendall tau between theta . phi and r* over each prompt's K responses
    (prefopt's `ranking_agreement` metric)
Writes kwise_efficiency.{json,md,png} to benchmarks/results/ (or --output). A few minutes on 2 CPU cores.
"""

import time

import datasets
import torch

from _reporting import ZERO, environment, format_interval, interval, parse_arguments, pyplot, settings, versus, write
from prefopt.data import load_metric, to_pairs
from prefopt.losses import LogProbs, get_loss

# --- settings ----------------------------------------------------------------------------------
METHODS = ["plackett_luce", "all_pairs", "best_vs_rest", "best_vs_worst"]  # the last three: to_pairs strategies + dpo
K = 4
DIM = 8
PROMPT_COUNTS = [25, 50, 100, 200, 400, 800, 1600]
TEST_PROMPTS = 500
SEEDS = list(range(8))
TRUE_REWARD_SCALE = 2.0  # |w*|: rankings are informative but noisy
BETA = 1.0
STEPS = 500  # full-batch Adam steps, the same for every method and size
LEARNING_RATE = 0.05
SMOKE = {"PROMPT_COUNTS": [20, 40], "TEST_PROMPTS": 30, "SEEDS": [0, 1], "STEPS": 20}


def make_task(seed):
    """True weights, train/test features, and one Plackett-Luce ranking (best first) per training prompt."""
    generator = torch.Generator().manual_seed(seed)
    true_weights = torch.randn(DIM, generator=generator)
    true_weights = TRUE_REWARD_SCALE * true_weights / true_weights.norm()
    train_features = torch.randn(max(PROMPT_COUNTS), K, DIM, generator=generator)
    test_features = torch.randn(TEST_PROMPTS, K, DIM, generator=generator)
    uniform = torch.rand(max(PROMPT_COUNTS), K, generator=generator).clamp_min(1e-12)
    gumbel = -torch.log(-torch.log(uniform))
    rankings = torch.argsort(train_features @ true_weights + gumbel, dim=1, descending=True)  # Plackett-Luce sample
    return true_weights, train_features, test_features, rankings


def split_rankings(rankings):
    """Pairs (prompt, chosen, rejected) per to_pairs strategy, made by prefopt.data.to_pairs on K-wise rows."""
    rows = datasets.Dataset.from_dict({
        "prompt": [f"prompt {index}" for index in range(rankings.shape[0])],
        "completions": [[f"response {response}" for response in ranking] for ranking in rankings.tolist()],
        "prompt_index": list(range(rankings.shape[0])),
    })
    pairs = {}
    for strategy in METHODS[1:]:
        split = to_pairs(rows, strategy)
        response = lambda texts: torch.tensor([int(text.split()[1]) for text in texts])  # noqa: E731
        pairs[strategy] = torch.stack(
            [torch.tensor(split["prompt_index"]), response(split["chosen"]), response(split["rejected"])], dim=1)
    return pairs


def train(method, features, rankings, pairs, prompt_count):
    theta = torch.zeros(DIM, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=LEARNING_RATE)
    if method == "plackett_luce":
        spec, prompts, columns = get_loss("plackett_luce"), torch.arange(prompt_count), rankings[:prompt_count]
    else:
        kept = pairs[method][pairs[method][:, 0] < prompt_count]
        spec, prompts, columns = get_loss("dpo"), kept[:, 0], kept[:, 1:]
    for _ in range(STEPS):
        log_probs = torch.log_softmax(features[prompts] @ theta, dim=-1)  # [rows, K]
        ranked = log_probs.gather(1, columns)  # best first: a ranking of K, or a (chosen, rejected) pair
        reference = torch.full_like(ranked, -torch.log(torch.tensor(float(K))))
        loss = spec(LogProbs(policy=ranked, reference=reference), beta=BETA).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return theta.detach()


def evaluate(theta, true_weights, features, ranking_agreement):
    true_reward = features @ true_weights  # [P, K]
    implicit_reward = features @ theta
    policy = torch.softmax(implicit_reward, dim=-1)
    agreement = ranking_agreement.compute(predictions=implicit_reward.tolist(), references=true_reward.tolist())
    target = true_weights / BETA
    return {
        "parameter_error": float((theta - target).norm() / target.norm()),
        "expected_true_reward": float((policy * true_reward).sum(-1).mean()),
        "kendall_tau": float(agreement["kendall_tau"]),
    }


METRICS = ("parameter_error", "expected_true_reward", "kendall_tau")


def main(argv=None):
    arguments = parse_arguments(__doc__, argv)
    if arguments.smoke:
        globals().update(SMOKE)
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only add contention
    started = time.time()
    ranking_agreement = load_metric("ranking_agreement")
    runs, optimum = [], []
    for seed in SEEDS:
        true_weights, train_features, test_features, rankings = make_task(seed)
        pairs = split_rankings(rankings)
        optimum.append(evaluate(true_weights / BETA, true_weights, test_features, ranking_agreement)["expected_true_reward"])
        for prompt_count in PROMPT_COUNTS:
            for method in METHODS:
                theta = train(method, train_features, rankings, pairs, prompt_count)
                training_pairs = prompt_count if method == "plackett_luce" else int((pairs[method][:, 0] < prompt_count).sum())
                runs.append({"method": method, "prompts": prompt_count, "seed": seed, "training_rows": training_pairs,
                             **evaluate(theta, true_weights, test_features, ranking_agreement)})

    def values(method, prompt_count, metric):
        return [r[metric] for r in sorted(runs, key=lambda r: r["seed"]) if r["method"] == method and r["prompts"] == prompt_count]

    summary = []
    for method in METHODS:
        for prompt_count in PROMPT_COUNTS:
            row = {"method": method, "prompts": prompt_count}
            for metric in METRICS:
                row[metric] = interval(values(method, prompt_count, metric))
            # paired over seeds: the same rankings, split or not
            row["parameter_error_minus_plackett_luce"] = interval(
                [a - b for a, b in zip(values(method, prompt_count, "parameter_error"),
                                       values("plackett_luce", prompt_count, "parameter_error"))])
            summary.append(row)
    cell = lambda method, prompt_count: next(r for r in summary if r["method"] == method and r["prompts"] == prompt_count)  # noqa: E731

    record = {"settings": settings(globals()), "environment": environment(started),
              "optimum_expected_true_reward": interval(optimum), "summary": summary, "runs": runs}
    lines = [
        f"Parameter error |theta - w*/beta| / |w*/beta| on the same Plackett-Luce rankings (K = {K}), "
        f"mean [95% t-interval] over {len(SEEDS)} seeds; lower is better:",
        "",
        "| prompts | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for prompt_count in PROMPT_COUNTS:
        lines.append(f"| {prompt_count} | " + " | ".join(
            format_interval(cell(m, prompt_count)["parameter_error"]) for m in METHODS) + " |")
    lines += ["", "Parameter error minus plackett_luce's on the same seed (paired; > 0: plackett_luce is more accurate):", "",
              "| prompts | " + " | ".join(METHODS[1:]) + " |", "|---|" + "---|" * (len(METHODS) - 1)]
    for prompt_count in PROMPT_COUNTS:
        lines.append(f"| {prompt_count} | " + " | ".join(
            format_interval(cell(m, prompt_count)["parameter_error_minus_plackett_luce"]) for m in METHODS[1:]) + " |")
    optimum_reward = record["optimum_expected_true_reward"]["mean"]
    lines += ["", f"Expected true reward of the learned policy on held-out prompts (optimum theta = w*/beta: "
              f"{optimum_reward:.3f}; uniform reference: 0):", "",
              "| prompts | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for prompt_count in PROMPT_COUNTS:
        lines.append(f"| {prompt_count} | " + " | ".join(
            format_interval(cell(m, prompt_count)["expected_true_reward"]) for m in METHODS) + " |")
    lines += ["", "Ranking agreement (mean Kendall tau of theta . phi against r* over each held-out prompt's K responses):", "",
              "| prompts | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for prompt_count in PROMPT_COUNTS:
        lines.append(f"| {prompt_count} | " + " | ".join(
            format_interval(cell(m, prompt_count)["kendall_tau"]) for m in METHODS) + " |")
    largest = PROMPT_COUNTS[-1]
    lines += ["", f"At {largest} prompts, error minus plackett_luce's (paired): " + ", ".join(
        f"{m} {versus(cell(m, largest)['parameter_error_minus_plackett_luce'], ZERO, 'zero')}" for m in METHODS[1:])
              + ".", "", f"Environment: {record['environment']}"]
    write(arguments.output, "kwise_efficiency", record, lines)

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for metric, axis, label in zip(METRICS, axes, ("parameter error (log)", "expected true reward", "Kendall tau")):
        for method in METHODS:
            cells = [cell(method, n)[metric] for n in PROMPT_COUNTS]
            axis.plot(PROMPT_COUNTS, [c["mean"] for c in cells], marker="o", label=method)
            if cells[0]["low"] is not None:
                axis.fill_between(PROMPT_COUNTS, [c["low"] for c in cells], [c["high"] for c in cells], alpha=0.2)
        axis.set_xscale("log")
        axis.set_xlabel("training prompts (one ranking of K = 4 each)")
        axis.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[1].axhline(optimum_reward, color="gray", linestyle=":", label="optimum")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"K-wise rankings: plackett_luce vs split into pairs (95% intervals, {len(SEEDS)} seeds)")
    figure.tight_layout()
    figure.savefig(arguments.output / "kwise_efficiency.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
