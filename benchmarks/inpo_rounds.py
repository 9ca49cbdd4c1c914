"""INPO rounds against iterative DPO: does each round's policy beat the previous one under the oracle?

Claim (LOSSES.md; Zhang et al. 2024, "Iterative Nash Policy Optimization", arXiv:2407.00617): each INPO
round improves the win rate against the previous round's policy under the preference oracle. Beside it,
iterative DPO (the public recipe: DPO on the best and worst of K samples of the current policy, a fresh
round from the last policy) with the same rounds, samples, steps and seeds.

Setting: the tiny word-level Llama that compare_losses.py builds and fits in-script to the bundled sentiment
task's responses is pi_ref = pi_1. prefopt.online.train_online runs ROUNDS rounds: sample K =
SAMPLES_PER_PROMPT responses per training prompt from pi_t at temperature 1, rank them under the oracle (a
Bradley-Terry oracle over the task's ground-truth reward; INPO by knockout tournament as its paper,
iterative DPO by best/worst reward as its recipes; with a deterministic reward both pick the same pair),
train pi_{t+1} from pi_t (INPO with log pi_t of every response precomputed), and evaluate: the oracle's
mean preference probability of pi_{t+1}'s samples over pi_t's (win rate vs previous) and over pi_ref's
(win rate vs reference) on held-out prompts, the mean true reward, and a Monte-Carlo KL(pi_{t+1} || pi_ref).
Per method and round, mean and 95% t-interval over seeds; INPO minus iterative DPO paired over seeds.
Writes inpo_rounds.{json,md,png} to benchmarks/results/ (or --output). --smoke: seconds (CI).
"""

import copy
import sys
import tempfile
import time

import torch

import compare_losses as shared_reference  # the tiny reference: same model, tokenizer and fit as compare_losses.py
from _reporting import ZERO, environment, format_interval, interval, parse_arguments, pyplot, settings, versus, write

# --- settings -----------------------------------------------------------------------------------
METHODS = {"inpo": ("inpo", "knockout"), "iterative dpo": ("dpo", "best_worst")}  # label -> (registered loss, ranking)
TASK = "sentiment"
SEEDS = list(range(10))
ROUNDS = 3  # the INPO paper's
SAMPLES_PER_PROMPT = 8  # K, the INPO paper's
TEMPERATURE = 1.0
MAX_NEW_TOKENS = 48
TRAIN_PROMPTS = 128  # sampled every round; one (best, worst) pair each
EPOCHS = 2  # over a round's pairs
BATCH_SIZE = 8
LEARNING_RATE = 1e-3
EVAL_PROMPTS = 64  # held-out prompts of the per-round metrics
EVAL_SAMPLES = 8  # per held-out prompt and policy
THREADS = 1
SFT_STEPS = 200  # the tiny reference's supervised fit (compare_losses.py's setting)
SMOKE = {"SEEDS": [0, 1], "ROUNDS": 2, "SAMPLES_PER_PROMPT": 2, "MAX_NEW_TOKENS": 8, "TRAIN_PROMPTS": 4, "EPOCHS": 1,
         "BATCH_SIZE": 2, "EVAL_PROMPTS": 2, "EVAL_SAMPLES": 1, "SFT_STEPS": 2}
METRICS = ("win_rate/previous", "win_rate/reference", "reward/mean", "kl/reference", "train_loss", "pairs")


def run_rounds(loss, ranking, seed, reference, tokenizer, prompts, eval_prompts, reward):
    """train_online from a copy of the reference; its per-round history."""
    from prefopt import PrefOptConfig
    from prefopt.online import OnlineConfig, train_online

    config = OnlineConfig(rounds=ROUNDS, samples_per_prompt=SAMPLES_PER_PROMPT, temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS,
                          ranking=ranking, eval_samples_per_prompt=EVAL_SAMPLES)
    with tempfile.TemporaryDirectory(prefix="prefopt-inpo-benchmark-") as output_dir:
        args = PrefOptConfig(output_dir, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                             lr_scheduler_type="constant", seed=seed, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False,
                             dataloader_num_workers=0, disable_tqdm=True)
        result = train_online(copy.deepcopy(reference).train(), tokenizer, prompts, loss=loss, reward=reward, args=args, config=config,
                              eval_prompts=eval_prompts)
    return result.history


def main(argv=None):
    arguments = parse_arguments(__doc__, sys.argv[1:] if argv is None else argv)
    if arguments.smoke:
        globals().update(SMOKE)
    torch.set_num_threads(THREADS)
    started = time.time()
    from prefopt.data import get_task
    from prefopt.rewards import FunctionReward

    task = get_task(TASK)
    tokenizer = shared_reference.tiny_tokenizer(task)
    reference = shared_reference.tiny_reference(task, tokenizer, SFT_STEPS)
    prompts = task.load("pairwise", split="train")["prompt"][:TRAIN_PROMPTS]
    eval_prompts = task.load("pairwise", split="test")["prompt"][:EVAL_PROMPTS]
    reward = FunctionReward(task.reward)

    runs = []
    for label, (loss, ranking) in METHODS.items():
        for seed in SEEDS:
            run_started, cpu_started = time.time(), time.process_time()
            history = run_rounds(loss, ranking, seed, reference, tokenizer, prompts, eval_prompts, reward)
            runs.append({"method": label, "loss": loss, "ranking": ranking, "seed": seed, "rounds": history,
                         "wall_seconds": time.time() - run_started, "cpu_seconds": time.process_time() - cpu_started})
            print(f"{label} seed {seed}: win rate vs previous per round "
                  f"{[round(entry['win_rate/previous'], 3) for entry in history]}, vs reference "
                  f"{[round(entry['win_rate/reference'], 3) for entry in history]}", flush=True)

    summary = []
    for label in METHODS:
        mine = [run for run in runs if run["method"] == label]
        for number in range(ROUNDS):
            summary.append({"method": label, "round": number + 1,
                            **{metric: interval([run["rounds"][number][metric] for run in mine]) for metric in METRICS}})
    cell = {(row["method"], row["round"]): row for row in summary}
    labels = list(METHODS)
    paired = []  # INPO minus iterative DPO, per round, paired over seeds
    if len(labels) == 2:
        first, second = labels
        for number in range(ROUNDS):
            difference = {metric: interval([a["rounds"][number][metric] - b["rounds"][number][metric]
                                            for a, b in zip([r for r in runs if r["method"] == first], [r for r in runs if r["method"] == second])])
                          for metric in ("win_rate/reference", "reward/mean")}
            paired.append({"round": number + 1, **difference})

    verdicts = []
    for label in labels:
        rounds = [cell[(label, number + 1)]["win_rate/previous"] for number in range(ROUNDS)]
        words = [f"round {number + 1} {versus(rate, {'low': 0.5, 'high': 0.5}, '0.5')}" for number, rate in enumerate(rounds)]
        improved = all(rate["low"] is not None and rate["low"] > 0.5 for rate in rounds)
        verdicts.append((f"each {label} round beats the previous round's policy under the oracle",
                         ("reproduced" if improved else "not reproduced at every round") + ": win rate vs previous " + ", ".join(words)))
    for label in labels:  # the true reward the oracle stands for, round over round on the held-out prompts, paired over seeds
        mine = [run for run in runs if run["method"] == label]
        steps = [interval([run["rounds"][number]["reward/mean"] - run["rounds"][number - 1]["reward/mean"] for run in mine])
                 for number in range(1, ROUNDS)]
        if steps:
            verdicts.append((f"each later {label} round raises the held-out true reward over the previous round",
                             ", ".join(f"round {number + 2} minus round {number + 1}: {format_interval(step)} ({versus(step, ZERO, 'zero')})"
                                       for number, step in enumerate(steps))))
    for entry in paired:
        verdicts.append((f"{labels[0]} against {labels[1]}, round {entry['round']}",
                         f"win rate vs reference difference {format_interval(entry['win_rate/reference'])} "
                         f"({versus(entry['win_rate/reference'], ZERO, 'zero')}), true reward difference "
                         f"{format_interval(entry['reward/mean'])} ({versus(entry['reward/mean'], ZERO, 'zero')})"))

    record = {"settings": settings(globals()), "environment": environment(started), "summary": summary, "paired": paired, "runs": runs,
              "verdicts": [{"claim": claim, "verdict": verdict} for claim, verdict in verdicts]}
    lines = [
        f"{ROUNDS} rounds of prefopt.online.train_online on {TASK!r} from the tiny word-level Llama of compare_losses.py: each round "
        f"samples K = {SAMPLES_PER_PROMPT} responses for each of {len(prompts)} training prompts from pi_t (temperature {TEMPERATURE}), "
        f"pairs the best and worst under a Bradley-Terry oracle over the task's reward, and trains pi_(t+1) from pi_t for {EPOCHS} "
        f"epochs of {BATCH_SIZE} pairs per step (learning rate {LEARNING_RATE}, registry-default hyper-parameters). Win rates: the "
        f"oracle's mean preference probability over {EVAL_PROMPTS} held-out prompts x {EVAL_SAMPLES} samples. Mean [95% "
        f"t-interval] over {len(SEEDS)} seeds.",
        "",
        "| method | round | win rate vs previous round | win rate vs reference | true reward | KL(pi \\|\\| pi_ref) | pairs trained |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(f"| {row['method']} | {row['round']} | " + " | ".join(format_interval(row[metric], digits) for metric, digits in (
            ("win_rate/previous", 3), ("win_rate/reference", 3), ("reward/mean", 3), ("kl/reference", 2), ("pairs", 1))) + " |")
    lines += ["", "Verdicts (95% intervals; a win rate interval above 0.5 is an improvement):", ""]
    lines += [f"- *{claim}*: {verdict}." for claim, verdict in verdicts]
    lines += ["", f"Environment: {record['environment']}"]
    write(arguments.output, "inpo_rounds", record, lines)

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    rounds = list(range(1, ROUNDS + 1))
    for axis, (metric, title) in zip(axes, (("win_rate/previous", "win rate vs previous round"),
                                            ("win_rate/reference", "win rate vs reference"), ("reward/mean", "true reward"))):
        for offset, label in enumerate(labels):
            cells = [cell[(label, number)][metric] for number in rounds]
            means = [c["mean"] for c in cells]
            errors = [[m - (c["low"] if c["low"] is not None else m) for m, c in zip(means, cells)],
                      [(c["high"] if c["high"] is not None else m) - m for m, c in zip(means, cells)]]
            axis.errorbar([r + 0.08 * offset for r in rounds], means, yerr=errors, marker="o", capsize=3, label=label)
        if metric.startswith("win_rate"):
            axis.axhline(0.5, color="gray", linestyle=":")
        axis.set_xticks(rounds)
        axis.set_xlabel("round")
        axis.set_title(title)
        axis.legend(fontsize=8)
    figure.suptitle(f"INPO against iterative DPO over {ROUNDS} rounds ({len(SEEDS)} seeds, 95% intervals)")
    figure.tight_layout()
    figure.savefig(arguments.output / "inpo_rounds.png", dpi=110)
    plt.close(figure)
    return record


if __name__ == "__main__":
    main()
