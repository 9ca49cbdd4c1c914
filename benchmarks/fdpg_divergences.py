"""f-DPG's divergences towards one target: alignment against diversity (kl, rkl, tv, js).

Claims (LOSSES.md; Go et al. 2023, "Aligning Language Models with Preferences through f-divergence
Minimization", arXiv:2302.08215): no divergence dominates; Jensen-Shannon balances alignment and diversity;
reverse KL (the divergence RLHF's KL-regularised objective minimises) is mode-seeking and collapses diversity.

Setting (GDC-style, as the paper's pointwise constraints): the target is the reference restricted to the
responses that satisfy a binary constraint, p(y|x) = pi_ref(y|x) b(x, y) / Z(x), with b = "the review is
strongly in the requested sentiment" (the bundled sentiment task's reward >= CONSTRAINT_THRESHOLD; about 15%
of the reference's samples). The reference is the tiny word-level Llama that compare_losses.py builds and fits
in-script to the task's responses. Each divergence trains with prefopt.methods.fdpg.trainer.FDPGTrainer (target="constraint",
on-policy: every step samples from the policy) for the same steps, prompts, samples, learning rate and seeds.

Because p is pi_ref restricted, it can be sampled exactly by rejection sampling from pi_ref (TARGET_DRAWS draws
per held-out prompt, Z(x) estimated by the acceptance rate), so the target's own diversity is measured too:
a policy that matches p satisfies b always AND is as diverse as p. Per run, on held-out prompts (EVAL_SAMPLES
samples per prompt from the trained policy), mean and 95% t-interval over seeds:
  - alignment: constraint satisfaction (share of samples with b = 1);
  - diversity: distinct-1 / distinct-2 (distinct n-grams over all n-grams of a prompt's samples, averaged over
    prompts) and entropy (nats per token, -log pi(y) / |y| averaged over the policy's own samples);
  - distance to the target: forward KL(p || pi) = E_p[log p - log pi], estimated on the target's samples (the
    paper's main metric; it is infinite for a policy that gives a target response no mass, so it punishes
    collapse), and KL(pi || pi_ref) on the policy's samples (how far it moved);
  - the f-DPG training log (prefopt.methods.fdpg.trainer): constraint satisfaction of each step's on-policy samples.
A divergence "dominates" another when it is better on at least one of satisfaction, distinct-2 and KL(p || pi)
and worse on none, each by non-overlapping intervals.
Writes fdpg_divergences.{json,md,png} to benchmarks/results/ (or --output). --smoke: seconds (CI).
"""

import sys
import tempfile
import time

import torch

import compare_losses as shared_reference  # the tiny reference: same model, tokenizer and fit as compare_losses.py
from _reporting import environment, format_interval, interval, parse_arguments, pyplot, settings, versus, write

# --- settings -----------------------------------------------------------------------------------
DIVERGENCES = ["kl", "rkl", "tv", "js"]  # the fdpg loss's choices (forward KL is DPG, rkl is RLHF's objective)
TASK = "sentiment"
CONSTRAINT_THRESHOLD = 0.7  # b(x, y) = task reward >= this: about 3 lexicon words of the requested sentiment, none against
SEEDS = [0, 1, 2, 3, 4]
STEPS = 200
PROMPTS_PER_STEP = 4
SAMPLES_PER_PROMPT = 4  # on-policy samples per prompt and step (16 per step)
LEARNING_RATE = 3e-4  # 1e-3 made some seeds degenerate (entropy 2.5 nats/token, satisfaction 0.03); 3e-3 all
MAX_NEW_TOKENS = 48
TRAIN_PROMPTS = 200  # of the task's train split (each sampled every time it comes round)
EVAL_PROMPTS = 32  # of the test split
EVAL_SAMPLES = 8  # per held-out prompt, from each trained policy (and the first as many accepted target samples)
TARGET_DRAWS = 256  # reference draws per held-out prompt for rejection sampling from p
LOGGING_STEPS = 20
THREADS = 1
SFT_STEPS = 200  # the tiny reference's supervised fit (compare_losses.py's setting)
SMOKE = {"SEEDS": [0, 1], "STEPS": 2, "PROMPTS_PER_STEP": 2, "SAMPLES_PER_PROMPT": 2, "TRAIN_PROMPTS": 8, "EVAL_PROMPTS": 3,
         "EVAL_SAMPLES": 2, "TARGET_DRAWS": 32, "LOGGING_STEPS": 1, "DIVERGENCES": ["kl", "js"],
         "SFT_STEPS": 100}  # a reference that writes the task's reviews, so the target has samples to measure
METRICS = ("satisfaction", "distinct_1", "distinct_2", "entropy", "forward_kl_to_target", "kl_to_reference",
           "train_wall_seconds", "train_cpu_seconds")


def constraint(task):
    return lambda prompt, response: task.reward(prompt, response) >= CONSTRAINT_THRESHOLD


def as_responses(prompts, texts):
    from prefopt.chat import as_response

    return [as_response(prompt, text) for prompt, text in zip(prompts, texts)]


def scored(model, tokenizer, prompts, texts):
    """(sum of response log-probs, response token counts) of ``texts`` after ``prompts``, in float64."""
    from prefopt.logprobs import score

    result = score(model, tokenizer, prompts, as_responses(prompts, texts), batch_size=32, progress=False)
    return result.logps.double(), result.lengths.double()


def mean_distinct(groups, n):
    """distinct-n within each prompt's samples, averaged over prompts."""
    from prefopt.methods.fdpg.trainer import distinct_n

    return sum(distinct_n(group, n) for group in groups) / len(groups)


def target_samples(reference, tokenizer, prompts, satisfied):
    """Rejection sampling from p = pi_ref b / Z: per prompt, the accepted draws and log Z (log acceptance rate)."""
    from prefopt.online import generate

    draws = generate(reference, tokenizer, prompts, n=TARGET_DRAWS, max_new_tokens=MAX_NEW_TOKENS, seed=10_000,
                     batch_size=64, progress=False)
    accepted, log_z = [], []
    for prompt, group in zip(prompts, draws):
        kept = [text for text in group if satisfied(prompt, text)]
        accepted.append(kept)
        log_z.append(torch.tensor(len(kept) / len(group), dtype=torch.float64).log().item())
    return accepted, log_z


def describe_target(reference, tokenizer, prompts, accepted, log_z):
    """The target's own diversity (the first EVAL_SAMPLES accepted draws of prompts that have that many)."""
    groups = [group[:EVAL_SAMPLES] for group in accepted if len(group) >= EVAL_SAMPLES]
    flat_prompts = [prompt for prompt, group in zip(prompts, accepted) if len(group) >= EVAL_SAMPLES for _ in range(EVAL_SAMPLES)]
    logz = torch.tensor([z for z, group in zip(log_z, accepted) if len(group) >= EVAL_SAMPLES for _ in range(EVAL_SAMPLES)],
                        dtype=torch.float64)
    if not groups:
        return {"prompts": 0}
    logps, lengths = scored(reference, tokenizer, flat_prompts, [text for group in groups for text in group])
    return {"prompts": len(groups), "satisfaction": 1.0, "distinct_1": mean_distinct(groups, 1), "distinct_2": mean_distinct(groups, 2),
            "entropy": float((-(logps - logz) / lengths.clamp(min=1)).mean())}


def evaluate(policy, reference, tokenizer, prompts, satisfied, accepted, log_z, seed):
    """Alignment, diversity and distances of ``policy`` on the held-out prompts."""
    from prefopt.online import generate

    groups = generate(policy, tokenizer, prompts, n=EVAL_SAMPLES, max_new_tokens=MAX_NEW_TOKENS, seed=20_000 + seed,
                      batch_size=64, progress=False)
    flat_prompts = [prompt for prompt, group in zip(prompts, groups) for _ in group]
    flat = [text for group in groups for text in group]
    policy_logps, lengths = scored(policy, tokenizer, flat_prompts, flat)
    reference_logps, _ = scored(reference, tokenizer, flat_prompts, flat)
    # forward KL(p || pi) = E_p[log pi_ref + log b - log Z - log pi], on the accepted target samples (b = 1)
    target_prompts = [prompt for prompt, group in zip(prompts, accepted) for _ in group]
    target_texts = [text for group in accepted for text in group]
    target_logz = torch.tensor([z for z, group in zip(log_z, accepted) for _ in group], dtype=torch.float64)
    forward_kl = None  # no target sample (a reference that never satisfies b within TARGET_DRAWS draws)
    if target_texts:
        under_policy, _ = scored(policy, tokenizer, target_prompts, target_texts)
        under_reference, _ = scored(reference, tokenizer, target_prompts, target_texts)
        forward_kl = float((under_reference - target_logz - under_policy).mean())
    return {
        "satisfaction": sum(satisfied(p, y) for p, y in zip(flat_prompts, flat)) / len(flat),
        "distinct_1": mean_distinct(groups, 1), "distinct_2": mean_distinct(groups, 2),
        "entropy": float((-policy_logps / lengths.clamp(min=1)).mean()),
        "forward_kl_to_target": forward_kl, "kl_to_reference": float((policy_logps - reference_logps).mean()),
    }


def train(divergence, seed, reference, tokenizer, prompts, satisfied):
    """FDPGTrainer towards p from a copy of the reference; the trained policy and its training log."""
    import copy

    from prefopt import PrefOptConfig
    from prefopt.methods.fdpg.trainer import FDPGTrainer

    with tempfile.TemporaryDirectory(prefix="prefopt-fdpg-benchmark-") as output_dir:
        args = PrefOptConfig(output_dir, loss="fdpg", loss_kwargs={"divergence": divergence}, max_steps=STEPS, seed=seed,
                             per_device_train_batch_size=PROMPTS_PER_STEP, learning_rate=LEARNING_RATE,
                             lr_scheduler_type="constant", logging_steps=LOGGING_STEPS, save_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False,
                             dataloader_num_workers=0, disable_tqdm=True)
        trainer = FDPGTrainer(copy.deepcopy(reference).train(), tokenizer, prompts, target="constraint", constraint=satisfied,
                              samples_per_prompt=SAMPLES_PER_PROMPT, max_new_tokens=MAX_NEW_TOKENS, args=args)
        trainer.train()
    curve = [(entry["step"], entry["fdpg/constraint_satisfaction"]) for entry in trainer.state.log_history
             if "fdpg/constraint_satisfaction" in entry]
    return trainer.model.eval(), curve


def dominates(first, second):
    """``first`` is better on at least one of satisfaction, distinct-2 and KL(p || pi), worse on none (intervals)."""
    from _reporting import compare

    if first["forward_kl_to_target"] is None or second["forward_kl_to_target"] is None:
        return False
    verdicts = [compare(first["satisfaction"], second["satisfaction"]), compare(first["distinct_2"], second["distinct_2"]),
                compare(second["forward_kl_to_target"], first["forward_kl_to_target"])]  # lower KL is better
    return "higher" in verdicts and "lower" not in verdicts and "no interval" not in verdicts


def main(argv=None):
    arguments = parse_arguments(__doc__, sys.argv[1:] if argv is None else argv)
    if arguments.smoke:
        globals().update(SMOKE)
    torch.set_num_threads(THREADS)
    started = time.time()
    from prefopt.data import get_task

    task = get_task(TASK)
    satisfied = constraint(task)
    tokenizer = shared_reference.tiny_tokenizer(task)
    reference = shared_reference.tiny_reference(task, tokenizer, SFT_STEPS)
    train_prompts = task.load("pairwise", split="train")["prompt"][:TRAIN_PROMPTS]
    prompts = task.load("pairwise", split="test")["prompt"][:EVAL_PROMPTS]

    accepted, log_z = target_samples(reference, tokenizer, prompts, satisfied)
    acceptance = sum(len(group) for group in accepted) / (TARGET_DRAWS * len(prompts))
    target = describe_target(reference, tokenizer, prompts, accepted, log_z)
    print(f"target: acceptance {acceptance:.3f} of the reference's draws; {target}", flush=True)
    reference_metrics = evaluate(reference, reference, tokenizer, prompts, satisfied, accepted, log_z, seed=0)

    runs = []
    for divergence in DIVERGENCES:
        for seed in SEEDS:
            run_started, cpu_started = time.time(), time.process_time()
            policy, curve = train(divergence, seed, reference, tokenizer, train_prompts, satisfied)
            wall, cpu = time.time() - run_started, time.process_time() - cpu_started
            run = {"divergence": divergence, "seed": seed, **evaluate(policy, reference, tokenizer, prompts, satisfied, accepted, log_z, seed),
                   "train_wall_seconds": wall, "train_cpu_seconds": cpu, "training_satisfaction": curve}
            runs.append(run)
            print(f"{divergence} seed {seed}: satisfaction {run['satisfaction']:.3f}, distinct-2 {run['distinct_2']:.3f}, "
                  f"entropy {run['entropy']:.3f}, KL(p||pi) {run['forward_kl_to_target']}, {wall:.1f} s", flush=True)

    def cell(values):
        return None if None in values else interval(values)

    summary = [{"divergence": divergence, **{metric: cell([r[metric] for r in runs if r["divergence"] == divergence]) for metric in METRICS}}
               for divergence in DIVERGENCES]
    by_name = {row["divergence"]: row for row in summary}
    steps = [step for step, _ in runs[0]["training_satisfaction"]]
    curves = {divergence: [interval([dict(r["training_satisfaction"])[step] for r in runs if r["divergence"] == divergence]) for step in steps]
              for divergence in DIVERGENCES}

    dominance = {first: [second for second in DIVERGENCES if second != first and dominates(by_name[first], by_name[second])]
                 for first in DIVERGENCES}
    verdicts = []
    dominant = [name for name, beaten in dominance.items() if len(beaten) == len(DIVERGENCES) - 1]
    verdicts.append(("no divergence dominates", "not reproduced: " + ", ".join(dominant) + " dominates every other" if dominant
                     else "reproduced: no divergence is better than every other on one of satisfaction, distinct-2, KL(p||pi) "
                          "while worse on none" + ("; " + "; ".join(f"{a} dominates {', '.join(b)}" for a, b in dominance.items() if b)
                                                    if any(dominance.values()) else "")))
    if {"js", "kl", "rkl"} <= set(by_name) and by_name["js"]["forward_kl_to_target"] is not None:
        js, kl, rkl = by_name["js"], by_name["kl"], by_name["rkl"]
        verdicts.append(("JS balances alignment and diversity",
                         f"satisfaction {versus(js['satisfaction'], kl['satisfaction'], 'kl')}, {versus(js['satisfaction'], rkl['satisfaction'], 'rkl')}; "
                         f"distinct-2 {versus(js['distinct_2'], kl['distinct_2'], 'kl')}, {versus(js['distinct_2'], rkl['distinct_2'], 'rkl')}; "
                         f"KL(p||pi) {versus(js['forward_kl_to_target'], kl['forward_kl_to_target'], 'kl')}, "
                         f"{versus(js['forward_kl_to_target'], rkl['forward_kl_to_target'], 'rkl')}"))
    if "rkl" in by_name and target.get("prompts"):
        rkl = by_name["rkl"]
        point = lambda value: {"low": value, "high": value}  # noqa: E731 - the target's measured value as an interval
        verdicts.append(("reverse KL collapses diversity",
                         f"rkl's distinct-2 {versus(rkl['distinct_2'], point(target['distinct_2']), 'the target')} and entropy "
                         f"{versus(rkl['entropy'], point(target['entropy']), 'the target')}; distinct-2 against the others: "
                         + ", ".join(versus(rkl["distinct_2"], by_name[other]["distinct_2"], other) for other in DIVERGENCES if other != "rkl")))

    record = {"settings": settings(globals()), "environment": environment(started), "target": {"acceptance": acceptance, **target},
              "reference": reference_metrics, "summary": summary, "runs": runs, "steps": steps, "training_curves": curves,
              "dominance": dominance, "verdicts": [{"claim": claim, "verdict": verdict} for claim, verdict in verdicts]}

    lines = [
        f"f-DPG towards p = pi_ref restricted to {TASK!r} reviews with reward >= {CONSTRAINT_THRESHOLD} (the reference "
        f"satisfies it {acceptance:.1%} of the time), prefopt.methods.fdpg.trainer.FDPGTrainer, {STEPS} steps x {PROMPTS_PER_STEP} prompts x "
        f"{SAMPLES_PER_PROMPT} on-policy samples, learning rate {LEARNING_RATE}, from the tiny word-level Llama of compare_losses.py; "
        f"{EVAL_PROMPTS} held-out prompts x {EVAL_SAMPLES} samples; mean [95% t-interval] over {len(SEEDS)} seeds.",
        "",
        "| policy | constraint satisfaction | distinct-1 | distinct-2 | entropy (nats/token) | KL(p \\|\\| pi) | KL(pi \\|\\| pi_ref) | train wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(f"| {row['divergence']} | " + " | ".join("n/a" if row[metric] is None else format_interval(row[metric], digits) for metric, digits in (
            ("satisfaction", 3), ("distinct_1", 3), ("distinct_2", 3), ("entropy", 3), ("forward_kl_to_target", 2),
            ("kl_to_reference", 2), ("train_wall_seconds", 1))) + " |")
    lines.append(f"| reference pi_ref | {reference_metrics['satisfaction']:.3f} | {reference_metrics['distinct_1']:.3f} | "
                 f"{reference_metrics['distinct_2']:.3f} | {reference_metrics['entropy']:.3f} | "
                 f"{'n/a' if reference_metrics['forward_kl_to_target'] is None else format(reference_metrics['forward_kl_to_target'], '.2f')} | 0 | |")
    if target.get("prompts"):
        lines.append(f"| target p (rejection sampling, {target['prompts']} prompts) | 1 | {target['distinct_1']:.3f} | "
                     f"{target['distinct_2']:.3f} | {target['entropy']:.3f} | 0 | | |")
    lines += ["", "Verdicts (95% intervals over seeds; the target's diversity is one measurement, compared as a point):", ""]
    lines += [f"- *{claim}*: {verdict}." for claim, verdict in verdicts]
    lines += ["", f"Environment: {record['environment']}"]
    write(arguments.output, "fdpg_divergences", record, lines)

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for axis, (metric, label) in zip(axes[:2], (("distinct_2", "distinct-2 (diversity)"), ("entropy", "entropy, nats/token (diversity)"))):
        for row in summary:
            x, y = row["satisfaction"], row[metric]
            xerr = [[x["mean"] - (x["low"] if x["low"] is not None else x["mean"])], [(x["high"] if x["high"] is not None else x["mean"]) - x["mean"]]]
            yerr = [[y["mean"] - (y["low"] if y["low"] is not None else y["mean"])], [(y["high"] if y["high"] is not None else y["mean"]) - y["mean"]]]
            axis.errorbar([x["mean"]], [y["mean"]], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=row["divergence"])
        axis.scatter([reference_metrics["satisfaction"]], [reference_metrics[metric]], marker="s", color="gray", label="pi_ref")
        if target.get("prompts"):
            axis.scatter([1.0], [target[metric]], marker="*", s=150, color="black", label="target p")
        axis.set_xlabel("constraint satisfaction (alignment)")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    for divergence in DIVERGENCES:
        means = [cell["mean"] for cell in curves[divergence]]
        axes[2].plot(steps, means, marker=".", label=divergence)
    axes[2].set_xlabel("training step")
    axes[2].set_ylabel("satisfaction of the step's on-policy samples")
    axes[2].legend(fontsize=8)
    figure.suptitle(f"f-DPG divergences towards one constraint target ({len(SEEDS)} seeds, 95% intervals)")
    figure.tight_layout()
    figure.savefig(arguments.output / "fdpg_divergences.png", dpi=110)
    plt.close(figure)
    return record


if __name__ == "__main__":
    main()
