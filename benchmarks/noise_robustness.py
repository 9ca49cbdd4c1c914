"""Label-noise robustness of dpo, cdpo and rdpo on a task with a known ground-truth reward.

Reproduction target (LOSSES.md, Chowdhury et al. 2024): under random label flips, rDPO's policy
degrades less than DPO's and cDPO's as the flip rate eps grows.

Setting: the paper's own log-linear model. Each prompt has N_RESPONSES candidate responses with
features phi(x, y) in R^DIM; the policy is pi_theta(y|x) = softmax_y(theta . phi(x, y)), the
reference is theta = 0 (uniform), and the true reward is r*(x, y) = w* . phi(x, y). Training pairs
are labelled by the Bradley-Terry model of r*, then each label is flipped with probability eps
(the flips are recorded; rdpo and cdpo are told the true eps). Every loss is called through the
prefopt registry on `LogProbs` batches, exactly as the trainer calls it.

Reported on held-out prompts, per loss and eps (mean and std over seeds):
  - expected true reward of the policy  E_{y ~ pi_theta}[r*(x, y)]   (higher is better)
  - preference accuracy of the implicit reward theta . phi against r* on all response pairs
  - cosine(theta, w*), and |theta| / |w*/beta| (the scale of the learned reward relative to the
    KL-regularised optimum pi_ref * exp(r*/beta); a policy can beat the optimum's expected reward
    only by being sharper than beta allows, i.e. by overshooting this scale)
Writes benchmarks/results/noise_robustness.{json,md,png}. Runs in about a minute on 2 CPU cores.
"""

import json
import math
import platform
import time
from pathlib import Path

import torch

import prefopt
from prefopt.losses import LogProbs, get_loss

# --- settings ----------------------------------------------------------------------------------
LOSSES = {"dpo": {}, "cdpo": {"epsilon": "eps"}, "rdpo": {"epsilon": "eps"}}  # "eps" = the true flip rate
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
OUTPUT = Path(__file__).parent / "results"


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


def main():
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only add contention
    started = time.time()
    runs = []
    for seed in SEEDS:
        true_weights, train_features, test_features, chosen, rejected, generator = make_task(seed)
        for rate in FLIP_RATES:
            noisy_chosen, noisy_rejected, flipped = flip(chosen, rejected, rate, generator)
            for loss_name, template in LOSSES.items():
                hyperparameters = {k: (rate if v == "eps" else v) for k, v in template.items()}
                theta = train(loss_name, hyperparameters, train_features, noisy_chosen, noisy_rejected, seed)
                runs.append(
                    {"loss": loss_name, "flip_rate": rate, "seed": seed, "observed_flip_rate": float(flipped.float().mean()),
                     **evaluate(theta, true_weights, test_features)}
                )
    # the best achievable policy at this beta: theta = w* / beta (pi_ref * exp(r*/beta))
    optimum = [evaluate(make_task(seed)[0] / BETA, make_task(seed)[0], make_task(seed)[2]) for seed in SEEDS]

    summary = []
    for loss_name in LOSSES:
        for rate in FLIP_RATES:
            cell = [r for r in runs if r["loss"] == loss_name and r["flip_rate"] == rate]
            row = {"loss": loss_name, "flip_rate": rate}
            for metric in ("expected_true_reward", "preference_accuracy", "cosine_to_true_reward", "scale_vs_optimum"):
                values = torch.tensor([r[metric] for r in cell])
                row[metric] = float(values.mean())
                row[metric + "_std"] = float(values.std()) if len(values) > 1 else math.nan  # one seed: undefined
            summary.append(row)

    OUTPUT.mkdir(exist_ok=True)
    environment = {
        "prefopt": prefopt.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor() or "unknown",
        "threads": torch.get_num_threads(), "seconds": round(time.time() - started, 1),
    }
    settings = {k: v for k, v in globals().items() if k.isupper() and k != "OUTPUT"}
    optimum_reward = sum(o["expected_true_reward"] for o in optimum) / len(optimum)
    (OUTPUT / "noise_robustness.json").write_text(json.dumps(
        {"settings": settings, "environment": environment, "optimum_expected_true_reward": optimum_reward,
         "summary": summary, "runs": runs}, indent=2))

    lines = [
        f"Expected true reward of the learned policy on held-out prompts (mean ± std over {len(SEEDS)} seeds; "
        f"optimum at beta={BETA}: {optimum_reward:.3f}; uniform reference: 0).",
        "",
        "| flip rate | " + " | ".join(LOSSES) + " |",
        "|---|" + "---|" * len(LOSSES),
    ]
    for rate in FLIP_RATES:
        cells = [next(r for r in summary if r["loss"] == n and r["flip_rate"] == rate) for n in LOSSES]
        lines.append(f"| {rate:.1f} | " + " | ".join(
            f"{c['expected_true_reward']:.3f} ± {c['expected_true_reward_std']:.3f}" for c in cells) + " |")
    lines += ["", "Preference accuracy of the implicit reward against the true reward (held-out, all pairs):", "",
              "| flip rate | " + " | ".join(LOSSES) + " |", "|---|" + "---|" * len(LOSSES)]
    for rate in FLIP_RATES:
        cells = [next(r for r in summary if r["loss"] == n and r["flip_rate"] == rate) for n in LOSSES]
        lines.append(f"| {rate:.1f} | " + " | ".join(f"{c['preference_accuracy']:.3f}" for c in cells) + " |")
    lines += ["", "Scale of the learned reward relative to the optimum's, |theta| / |w*/beta| (1 = unbiased; "
              "below 1 the label noise shrank the reward, above 1 the estimate overshoots):", "",
              "| flip rate | " + " | ".join(LOSSES) + " |", "|---|" + "---|" * len(LOSSES)]
    for rate in FLIP_RATES:
        cells = [next(r for r in summary if r["loss"] == n and r["flip_rate"] == rate) for n in LOSSES]
        lines.append(f"| {rate:.1f} | " + " | ".join(
            f"{c['scale_vs_optimum']:.2f} ± {c['scale_vs_optimum_std']:.2f}" for c in cells) + " |")
    lines += ["", f"Environment: {json.dumps(environment)}"]
    (OUTPUT / "noise_robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for loss_name in LOSSES:
        rows = [r for r in summary if r["loss"] == loss_name]
        axis.errorbar([r["flip_rate"] for r in rows], [r["expected_true_reward"] for r in rows],
                      yerr=[r["expected_true_reward_std"] for r in rows], marker="o", capsize=3, label=loss_name)
    axis.axhline(optimum_reward, color="gray", linestyle=":", label="optimum")
    axis.set_xlabel("label flip rate eps")
    axis.set_ylabel("expected true reward (held-out)")
    axis.set_title("Robustness to random label flips")
    axis.legend()
    figure.tight_layout()
    figure.savefig(OUTPUT / "noise_robustness.png", dpi=120)


if __name__ == "__main__":
    main()
