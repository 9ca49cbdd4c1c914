"""Which loss to pick: every registered loss that can train on a bundled task, same budget, several seeds.

The losses come from the registry and the field providers (prefopt.main_job.trainable_losses, with
prefopt.fields.servable_fields deciding whether a ranked loss can take the task's K = 4 rankings),
never from a hand-kept list: a loss registered tomorrow is benchmarked tomorrow. Pair losses train on
the task's pairwise rows, ranked losses (plackett_luce) on its K-wise rankings. Registered losses that
no provider can feed from the bundled rows (the online methods: fdpg, inpo, bvpo) are listed with the
fields they miss, and as "not yet" while their round drivers are not in this branch.

Every loss trains from the same reference with the same steps, batch size, learning rate and seeds
(the seed sets the data order and the sampling); its hyper-parameters are the registry's defaults.
Per loss, mean and 95% t-interval over seeds (benchmarks/_reporting.interval):
  - held-out preference accuracy: share of test pairs whose implicit reward
    beta * (log pi - log pi_ref) is higher for the chosen response, and the mean reward margin
  - win rate against the reference: for each held-out prompt, SAMPLES responses sampled from the
    trained policy and as many from the reference (prefopt.online.generate), paired in order and
    scored by the task's ground-truth reward; a win counts 1, a tie 1/2
  - KL(pi || pi_ref): mean over the policy's own samples of log pi(y|x) - log pi_ref(y|x)
    (prefopt.logprobs.score on both models): an unbiased Monte Carlo estimate
  - wall time and process CPU time of training, and peak memory during the run (peak RSS of the
    process, reset before each run, on CPU; CUDA max_memory_allocated on a GPU)

Presets:
  --quick (default): a tiny Llama (word-level tokenizer over the task's words, 2 layers) built and
    supervised-fine-tuned in-script on the task's responses, chosen and rejected alike, to make a
    reference that writes the task's words; the default model is too slow for 20+ losses x 3 seeds
    on 2 CPU cores (about 9 s per step). 5 minutes wall (2 minutes CPU) on a shared 2-core machine.
  --full: the default model (SmolLM2-135M-Instruct) with LoRA, more steps and seeds, for a GPU:
    python benchmarks/compare_losses.py --full
  --smoke: a few losses, tiny settings, seconds (CI).
Writes compare_losses.{json,md,png} (--full: compare_losses_full.*) to benchmarks/results/ (or --output).
"""

import contextlib
import copy
import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from _reporting import ZERO, environment, format_interval, interval, parse_arguments, pyplot, settings, versus, write

# --- settings (the --quick preset; FULL and SMOKE replace some) -----------------------------------
TASK = "sentiment"  # its reward reads words (a lexicon score signed by the requested sentiment), which a tiny model can write
MODEL = "tiny"  # "tiny": built in-script; "default": prefopt.default_model() with LoRA
LOSSES = None  # None: every trainable loss; a list restricts (smoke)
SEEDS = [0, 1, 2]
STEPS = 20
BATCH_SIZE = 8
LEARNING_RATE = 1e-3
BETA = 0.1  # implicit-reward scale for losses whose defaults have no beta (sft)
MAX_LENGTH = 256
TRAIN_ROWS = 160  # of the task's train split (pairs or rankings)
TEST_PAIRS = 64  # held-out pairs for the preference accuracy
EVAL_PROMPTS = 16  # held-out prompts for the win rate and the KL
SAMPLES = 2  # responses per prompt, from the policy and from the reference each
MAX_NEW_TOKENS = 32
TEMPERATURE = 1.0
THREADS = 1  # the tiny model gains nothing from more on a shared machine
# the tiny reference: its size and supervised warm-up
TINY_HIDDEN = 64
TINY_LAYERS = 2
SFT_STEPS = 200
SFT_BATCH = 16
SFT_LEARNING_RATE = 3e-3
FULL = {"MODEL": "default", "THREADS": torch.get_num_threads(), "SEEDS": [0, 1, 2, 3, 4], "STEPS": 200, "BATCH_SIZE": 8, "LEARNING_RATE": 5e-4,
        "TRAIN_ROWS": 300, "EVAL_PROMPTS": 100, "SAMPLES": 4, "MAX_NEW_TOKENS": 128, "MAX_LENGTH": 512}
SMOKE = {"LOSSES": ["dpo", "plackett_luce"], "SEEDS": [0, 1], "STEPS": 2, "BATCH_SIZE": 4, "TRAIN_ROWS": 16,
         "TEST_PAIRS": 8, "EVAL_PROMPTS": 3, "SAMPLES": 2, "MAX_NEW_TOKENS": 8, "SFT_STEPS": 2}
# where each online method's driver lives (any of the names; built in parallel branches)
ONLINE_MODULES = {"fdpg": ("prefopt.fdpg", "prefopt.online.fdpg"), "inpo": ("prefopt.online.rounds",),
                  "vpo (online)": ("prefopt.online.rounds",)}


def plan(task):
    """(loss, data form) for every loss that can train on the task, and (loss, why not) for the others."""
    from prefopt.fields import servable_fields
    from prefopt.losses import get_loss, list_losses
    from prefopt.main_job import trainable_losses

    kwise_servable = servable_fields(task.load("kwise", split="train")[0])
    pairwise_servable = servable_fields(task.load("pairwise", split="train")[0])
    trainable = set(trainable_losses(task.name))
    runs, skipped = [], []
    for name in list_losses():
        spec = get_loss(name)
        if name not in trainable:
            missing = sorted(set(spec.required_fields) - pairwise_servable)
            reason = (f"needs {', '.join(missing)}, which no field provider fills from the bundled rows"
                      if missing else f"takes {spec.responses} responses")
            skipped.append((name, reason))
        elif spec.responses == "ranked" and set(spec.required_fields) <= kwise_servable:
            runs.append((name, "kwise"))
        else:
            runs.append((name, "pairwise"))
    if LOSSES is not None:
        runs = [run for run in runs if run[0] in LOSSES]
    return runs, skipped


def online_status():
    """Whether each online method's driver exists in this checkout ("not yet" otherwise)."""
    status = {}
    for method, modules in ONLINE_MODULES.items():
        found = False
        for module in modules:
            try:
                found = found or importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # prefopt.online is still a module, not a package
                pass
        status[method] = "driver present, not run by this script yet" if found else "not yet (its driver is not in this branch)"
    return status


# --- the tiny reference ---------------------------------------------------------------------------
SPECIAL = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|> {{ message['role'] }} {{ message['content'] }} <|im_end|> "
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def texts(task):
    from prefopt.data.tasks import response_text, user_text

    for form in ("pairwise", "kwise"):
        for split in task.load(form).values():
            for row in split:
                yield user_text(row["prompt"])
                for key in ("chosen", "rejected", "completions"):
                    values = row.get(key)
                    if values is None:
                        continue
                    for value in (values if key == "completions" else [values]):
                        yield response_text(value)


def tiny_tokenizer(task):
    """Word-level over every whitespace-separated word of the task (decoding joins words with spaces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in texts(task) for word in text.split()} - set(SPECIAL))
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(SPECIAL + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_reference(task, tokenizer):
    """A 2-layer Llama fitted by plain next-token training to the task's responses (chosen and rejected)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.logprobs import encode, pad_sequences

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=2 * TINY_HIDDEN, vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).float()
    rows = task.load("pairwise", split="train")
    sequences = []
    for row in rows:
        for key in ("chosen", "rejected"):
            prompt_ids, (completion_ids,) = encode(tokenizer, row["prompt"], [row[key]], eos_token=tokenizer.eos_token)
            sequences.append((prompt_ids, completion_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LEARNING_RATE)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(SFT_STEPS):
        chosen = torch.randint(len(sequences), (SFT_BATCH,), generator=generator).tolist()
        batch = pad_sequences([sequences[i] for i in chosen], tokenizer.pad_token_id)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"tiny reference: {sum(p.numel() for p in model.parameters())} parameters, vocabulary {len(tokenizer)}, "
          f"response NLL per token after {SFT_STEPS} steps {loss.item():.2f}", flush=True)
    model.eval()
    return model


def load_reference(task):
    """(reference model, tokenizer, peft config or None)."""
    if MODEL == "tiny":
        tokenizer = tiny_tokenizer(task)
        return tiny_reference(task, tokenizer), tokenizer, None
    from prefopt.models import default_lora_config, default_model

    model, tokenizer = default_model()
    if torch.cuda.is_available():  # the reference generates and scores beside the policy
        model.to("cuda")
    model.eval()
    return model, tokenizer, default_lora_config()


# --- measuring --------------------------------------------------------------------------------------
def reset_peak_memory():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the process's peak RSS (VmHWM)


def peak_memory_gib():
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # no reset possible: the process's peak


def responses_logps(model, tokenizer, prompts, responses):
    from prefopt.logprobs import score

    from prefopt.logprobs import is_conversational

    # a sampled text answers a conversational prompt as an assistant message
    responses = [[{"role": "assistant", "content": text}] if is_conversational(prompt) else text
                 for prompt, text in zip(prompts, responses)]
    return score(model, tokenizer, prompts, responses, batch_size=16).logps.double()


def sample(model, tokenizer, prompts, seed):
    from prefopt.online import generate

    samples = generate(model, tokenizer, prompts, n=SAMPLES, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
                       seed=seed, batch_size=8, progress=False)
    return [text for group in samples for text in group]


def train_and_measure(loss, form, seed, reference, tokenizer, lora, data, evaluation):
    """Train one loss from the reference; its held-out metrics."""
    from transformers import set_seed

    from prefopt import PrefOptConfig, Trainer
    from prefopt.losses import get_loss
    from prefopt.main_job import preference_metrics, sequence_logps

    set_seed(seed)
    policy = copy.deepcopy(reference)
    policy.train()
    train_dataset = data[form].shuffle(seed=seed)
    with tempfile.TemporaryDirectory(prefix="prefopt-compare-") as output_dir:
        args = PrefOptConfig(
            output_dir=output_dir, loss=loss, max_steps=STEPS, per_device_train_batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_length=MAX_LENGTH, logging_steps=max(1, STEPS),
            save_strategy="no", report_to=[], seed=seed, use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available(), gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
        )
        reset_peak_memory()
        started, cpu_started = time.time(), time.process_time()
        trainer = Trainer(policy, args=args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora)
        output = trainer.train()
        wall, cpu = time.time() - started, time.process_time() - cpu_started
        memory = peak_memory_gib()
    policy = trainer.model
    if not torch.isfinite(torch.tensor(output.training_loss)):
        raise FloatingPointError(f"{loss} seed {seed}: training loss {output.training_loss}")
    beta = get_loss(loss).hyperparameters.get("beta", BETA)
    preference = preference_metrics(sequence_logps(policy, tokenizer, evaluation["test_rows"]), evaluation["reference_logps"], beta=beta)

    prompts = evaluation["sample_prompts"]
    policy_samples = sample(policy, tokenizer, evaluation["prompts"], seed + 1000)
    reference_samples = evaluation["reference_samples"][seed]
    task = evaluation["task"]
    outcomes = []
    for prompt, mine, theirs in zip(prompts, policy_samples, reference_samples):
        difference = task.reward(prompt, mine) - task.reward(prompt, theirs)
        outcomes.append(1.0 if difference > 0 else 0.0 if difference < 0 else 0.5)
    log_ratio = responses_logps(policy, tokenizer, prompts, policy_samples) - responses_logps(reference, tokenizer, prompts, policy_samples)
    del trainer, policy
    return {
        "loss": loss, "form": form, "seed": seed, "beta": beta, "train_loss": output.training_loss,
        "preference_accuracy": preference["reward_accuracy"], "reward_margin": preference["reward_margin"],
        "win_rate": sum(outcomes) / len(outcomes), "ties": outcomes.count(0.5) / len(outcomes),
        "true_reward": sum(task.reward(p, s) for p, s in zip(prompts, policy_samples)) / len(prompts),
        "kl": float(log_ratio.mean()), "wall_seconds": wall, "cpu_seconds": cpu, "peak_memory_gib": memory,
    }


METRICS = ("preference_accuracy", "reward_margin", "win_rate", "true_reward", "kl", "wall_seconds", "cpu_seconds", "peak_memory_gib")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    full = "--full" in argv
    argv = [a for a in argv if a not in ("--full", "--quick")]
    arguments = parse_arguments(__doc__, argv)
    if arguments.smoke:
        globals().update(SMOKE)
    elif full:
        globals().update(FULL)
    name = "compare_losses_full" if full and not arguments.smoke else "compare_losses"
    torch.set_num_threads(THREADS)
    started = time.time()
    from prefopt.data import get_task
    from prefopt.main_job import sequence_logps

    task = get_task(TASK)
    runs_planned, skipped = plan(task)
    print(f"{len(runs_planned)} losses x {len(SEEDS)} seeds on {TASK!r}: {', '.join(f'{l} ({f})' for l, f in runs_planned)}", flush=True)
    reference, tokenizer, lora = load_reference(task)
    data = {form: task.load(form, split="train").select(range(min(TRAIN_ROWS, len(task.load(form, split="train")))))
            for form in {form for _, form in runs_planned}}
    test = task.load("pairwise", split="test")
    test_rows = list(test.select(range(min(TEST_PAIRS, len(test)))))
    prompts = [row["prompt"] for row in test.select(range(min(EVAL_PROMPTS, len(test))))]
    evaluation = {
        "task": task, "test_rows": test_rows, "prompts": prompts,
        "sample_prompts": [prompt for prompt in prompts for _ in range(SAMPLES)],
        "reference_logps": sequence_logps(reference, tokenizer, test_rows),
        "reference_samples": {seed: sample(reference, tokenizer, prompts, seed) for seed in SEEDS},
    }
    reference_reward = [sum(task.reward(p, s) for p, s in zip(evaluation["sample_prompts"], samples)) / len(samples)
                        for samples in evaluation["reference_samples"].values()]

    runs = []
    for loss, form in runs_planned:
        for seed in SEEDS:
            run = train_and_measure(loss, form, seed, reference, tokenizer, lora, data, evaluation)
            runs.append(run)
            print(f"{loss} seed {seed}: win {run['win_rate']:.3f}, accuracy {run['preference_accuracy']:.3f}, "
                  f"KL {run['kl']:.3f}, {run['wall_seconds']:.1f} s", flush=True)

    summary = []
    for loss, form in runs_planned:
        mine = [r for r in runs if r["loss"] == loss]
        summary.append({"loss": loss, "form": form, **{metric: interval([r[metric] for r in mine]) for metric in METRICS}})
    summary.sort(key=lambda row: -row["win_rate"]["mean"])
    row = {r["loss"]: r for r in summary}
    online = online_status()
    record = {"settings": settings(globals()), "environment": environment(started), "preset": "smoke" if arguments.smoke else "full" if full else "quick",
              "reference_true_reward": interval(reference_reward), "summary": summary, "runs": runs,
              "not_trained": [{"loss": loss, "why": why} for loss, why in skipped], "online": online}

    model_words = ("a tiny word-level Llama built and fitted in-script" if MODEL == "tiny"
                   else "SmolLM2-135M-Instruct with LoRA")
    lines = [
        f"Every trainable loss on the {TASK!r} task, {STEPS} steps x {BATCH_SIZE} rows, learning rate {LEARNING_RATE}, "
        f"registry-default hyper-parameters, from {model_words}; mean [95% t-interval] over {len(SEEDS)} seeds. "
        f"Win rate: the task's reward of the policy's samples against the reference's ({EVAL_PROMPTS} held-out prompts x "
        f"{SAMPLES} samples, ties 1/2). Sorted by win rate.",
        "",
        "| loss | data | win rate vs reference | held-out preference accuracy | reward margin | KL(pi \\|\\| pi_ref) | "
        "train wall s | train CPU s | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cells in summary:
        lines.append(f"| {cells['loss']} | {cells['form']} | " + " | ".join(
            format_interval(cells[metric], digits) for metric, digits in (
                ("win_rate", 3), ("preference_accuracy", 3), ("reward_margin", 3), ("kl", 3),
                ("wall_seconds", 1), ("cpu_seconds", 1), ("peak_memory_gib", 2))) + " |")
    lines += ["", f"Reference policy's mean true reward: {format_interval(record['reference_true_reward'], 3)}; "
              "a win rate of 0.5 is no change.", ""]
    if "dpo" in row:
        lines.append("Against dpo (95% intervals; a win rate interval that excludes 0.5 is a change from the reference):")
        lines.append("")
        for cells in summary:
            lines.append(f"- {cells['loss']}: win rate {versus(cells['win_rate'], row['dpo']['win_rate'], 'dpo')}, "
                         f"{versus(cells['win_rate'], {'low': 0.5, 'high': 0.5}, 'the reference (0.5)')}; "
                         f"preference accuracy {versus(cells['preference_accuracy'], row['dpo']['preference_accuracy'], 'dpo')}; "
                         f"KL {versus(cells['kl'], ZERO, 'zero')}.")
        lines.append("")
    lines.append("Not trained (the registry and field providers say they cannot train on the bundled rows): " +
                 "; ".join(f"{loss}: {why}" for loss, why in skipped) + ".")
    lines.append("Online methods: " + "; ".join(f"{method}: {state}" for method, state in online.items()) + ".")
    lines += ["", f"Environment: {record['environment']}"]
    write(arguments.output, name, record, lines)

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 0.3 * len(summary) + 2.5), sharey=True)
    labels = [cells["loss"] for cells in summary]
    for axis, (metric, title) in zip(axes, (("win_rate", "win rate vs reference"),
                                            ("preference_accuracy", "held-out preference accuracy"), ("kl", "KL(pi || pi_ref)"))):
        means = [cells[metric]["mean"] for cells in summary]
        errors = [[m - (c[metric]["low"] if c[metric]["low"] is not None else m) for m, c in zip(means, summary)],
                  [(c[metric]["high"] if c[metric]["high"] is not None else m) - m for m, c in zip(means, summary)]]
        axis.barh(range(len(labels)), means, xerr=errors, capsize=2)
        axis.set_yticks(range(len(labels)), labels)
        axis.set_title(title)
        if metric == "win_rate":
            axis.axvline(0.5, color="gray", linestyle=":")
    axes[0].invert_yaxis()
    figure.suptitle(f"Losses compared on {TASK!r} ({len(SEEDS)} seeds, 95% intervals)")
    figure.tight_layout()
    figure.savefig(arguments.output / f"{name}.png", dpi=110)
    plt.close(figure)
    return record


if __name__ == "__main__":
    main()
