"""Which loss to pick: every registered loss that can train on a bundled task, in its own mode, same budget, several seeds.

The losses come from the registry and the field providers (prefopt.main_job.trainable_losses, with
prefopt.training.fields.servable_fields deciding whether a ranked loss can take the task's K = 4 rankings),
never from a hand-kept list: a loss registered tomorrow is benchmarked tomorrow. Each run has a mode:
  - pairwise: an offline loss on the task's pairwise rows (prefopt.Trainer);
  - kwise: a ranked loss (plackett_luce) on the task's K = 4 rankings (prefopt.Trainer);
  - online rounds: prefopt.online.train_online, a loss that needs a field only its round loop fills
    (inpo: log pi_t of the round's samples) or that offers an online mode (vpo, mode="online": calibration
    samples); every round samples K responses per prompt from the current policy, pairs the best and worst
    under the task's reward as a Bradley-Terry oracle, and trains on those pairs;
  - on-policy: prefopt.methods.fdpg.trainer.FDPGTrainer, a loss that needs the proposal/target log-probs of samples drawn
    every step (fdpg, target="rlhf": P = pi_ref exp(r / beta) with the task's reward, beta its default).
Which mode fills which missing field is the one mapping kept here (FIELD_DRIVERS); a loss whose missing
fields no driver fills on this task (bvpo: reasoning traces) is listed as not trained, with the reason.

Budget: every run makes STEPS optimizer steps and scores 2 x BATCH_SIZE responses per step, from the same
reference, learning rate and seeds (the seed sets the data order and the sampling); its hyper-parameters
are the registry's defaults. Offline: STEPS steps x BATCH_SIZE pairs. Online rounds: ROUNDS rounds x
STEPS / ROUNDS steps x BATCH_SIZE pairs (one pair per prompt, so STEPS / ROUNDS x BATCH_SIZE prompts, each
sampled ONLINE_SAMPLES times a round). On-policy: STEPS steps x (2 x BATCH_SIZE / FDPG_SAMPLES) prompts x
FDPG_SAMPLES samples. The online methods additionally sample (and train_online evaluates each round), which
their wall and CPU times include; they see the task's prompts, never its labelled responses.
Per run, mean and 95% t-interval over seeds (benchmarks/_reporting.interval):
  - held-out preference accuracy: share of test pairs whose implicit reward
    beta * (log pi - log pi_ref) is higher for the chosen response, and the mean reward margin
    (beta: the loss's own, else BETA; the accuracy does not depend on it)
  - win rate against the reference: for each held-out prompt, SAMPLES responses sampled from the
    trained policy and as many from the reference (prefopt.online.generate), paired in order and
    scored by the task's ground-truth reward; a win counts 1, a tie 1/2; and the policy's mean true reward
  - KL(pi || pi_ref): mean over the policy's own samples of log pi(y|x) - log pi_ref(y|x)
    (prefopt.logprobs.score on both models): an unbiased Monte Carlo estimate
  - wall time and process CPU time of training (with its sampling), and peak memory during the run (peak
    RSS of the process, reset before each run, on CPU; CUDA max_memory_allocated on a GPU)

Presets:
  --quick (default): a tiny Llama (word-level tokenizer over the task's words, 2 layers) built and
    supervised-fine-tuned in-script on the task's responses, chosen and rejected alike, to make a
    reference that writes the task's words; the default model is too slow for 20+ losses x 3 seeds
    on 2 CPU cores (about 9 s per step). See the README for its measured wall and CPU time.
  --full: the default model (SmolLM2-135M-Instruct) with LoRA, more steps and seeds, for a GPU:
    python benchmarks/compare_losses.py --full
  --smoke: a few losses (one online: inpo, 1 round), tiny settings, seconds (CI).
Writes compare_losses.{json,md,png} (--full: compare_losses_full.*) to benchmarks/results/ (or --output).
"""

import collections
import contextlib
import copy
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
# the online modes (same STEPS and 2 x BATCH_SIZE scored responses per step as the offline losses)
ROUNDS = 2  # online rounds: STEPS / ROUNDS steps each
ONLINE_SAMPLES = 4  # K responses per prompt and round, of which the best and worst make the pair
FDPG_SAMPLES = 4  # on-policy: samples per prompt and step (2 x BATCH_SIZE / FDPG_SAMPLES prompts per step)
# the tiny reference: its size and supervised warm-up
TINY_HIDDEN = 64
TINY_LAYERS = 2
SFT_STEPS = 200
SFT_BATCH = 16
SFT_LEARNING_RATE = 3e-3
FULL = {"MODEL": "default", "THREADS": torch.get_num_threads(), "SEEDS": [0, 1, 2, 3, 4], "STEPS": 200, "BATCH_SIZE": 8, "LEARNING_RATE": 5e-4,
        "TRAIN_ROWS": 300, "EVAL_PROMPTS": 100, "SAMPLES": 4, "MAX_NEW_TOKENS": 128, "MAX_LENGTH": 512}
SMOKE = {"LOSSES": ["dpo", "plackett_luce", "inpo"], "SEEDS": [0, 1], "STEPS": 2, "BATCH_SIZE": 4, "TRAIN_ROWS": 16,
         "TEST_PAIRS": 8, "EVAL_PROMPTS": 3, "SAMPLES": 2, "MAX_NEW_TOKENS": 8, "SFT_STEPS": 2, "ROUNDS": 1, "ONLINE_SAMPLES": 2}

# A field no provider fills from the bundled rows -> the mode whose driver fills it. A loss that misses only
# fields of one mode trains in that mode; the drivers read everything else from the loss spec.
FIELD_DRIVERS = {
    "previous": "online rounds",  # train_online precomputes log pi_t of each round's pairs (inpo)
    "calibration_policy": "online rounds", "calibration_reference": "online rounds",  # its calibration samples (vpo online)
    "proposal": "on-policy", "target": "on-policy",  # FDPGTrainer scores every step's samples under q and P (fdpg)
}
DRIVERS = {"online rounds": "prefopt.online.train_online", "on-policy": "prefopt.methods.fdpg.trainer.FDPGTrainer"}
# Why a field that no driver fills here cannot be made meaningfully for this task (else the provider's own words).
NOT_ON_THIS_TASK = {
    field: ("the empty-trace view of reasoning traces (answers generated with reasoning on and off); the task has no "
            "traces and neither reference writes one (the tiny word-level model has no <think> token, SmolLM2-135M-Instruct "
            "no reasoning mode), so both views would be the same answers (EmptyTraceField(from_trace_pairs=True) behind "
            "an empty block), which is not what BVPO is for; its bundled task is prefopt.data.tasks.load_reasoning "
            "(arithmetic traces) for a model that writes <think> blocks")
    for field in ("empty_policy", "empty_reference")
}

Run = collections.namedtuple("Run", "label loss mode")  # label: the loss, or "<loss> (online)" for its second mode


def plan(task):
    """Every `Run` (label, loss, mode) that can train on the task, and (loss, why not) for the other losses."""
    from prefopt.training.fields import resolve_providers, servable_fields
    from prefopt.losses import get_loss, list_losses
    from prefopt.main_job import trainable_losses

    kwise_servable = servable_fields(task.load("kwise", split="train")[0])
    first_pair = task.load("pairwise", split="train")[0]
    pairwise_servable = servable_fields(first_pair)
    trainable = set(trainable_losses(task.name))
    providers = resolve_providers()
    runs, skipped = [], []
    for name in list_losses():
        spec = get_loss(name)
        if name in trainable:
            runs.append(Run(name, name, "kwise" if spec.responses == "ranked" and set(spec.required_fields) <= kwise_servable else "pairwise"))
            if "online" in spec.choices.get("mode", ()):  # the loss's online mode: train_online trains in it
                runs.append(Run(f"{name} (online)", name, "online rounds"))
            continue
        missing = sorted(set(spec.required_fields) - pairwise_servable)
        modes = {FIELD_DRIVERS.get(field) for field in missing}
        if missing and len(modes) == 1 and None not in modes and not (modes == {"online rounds"} and spec.responses == "single"):
            runs.append(Run(name, name, modes.pop()))
            continue
        if not missing:
            skipped.append((name, f"takes {spec.responses} responses"))
            continue
        unfilled = [field for field in missing if field not in FIELD_DRIVERS]
        reasons = dict.fromkeys(NOT_ON_THIS_TASK.get(field) or provider_refusal(providers[field], first_pair, name) for field in unfilled)
        skipped.append((name, f"needs {', '.join(missing)}, which neither a field provider nor an online driver fills "
                              f"on this task: {'; '.join(reasons)}"))
    if LOSSES is not None:
        runs = [run for run in runs if run.label in LOSSES]
    return runs, skipped


def provider_refusal(provider, example, loss):
    """The provider's own explanation of why it cannot fill its field from rows like ``example``."""
    try:
        provider.check(example, False, (loss,))
    except ValueError as error:
        return str(error)
    return "its provider accepts the rows but the loss's response form does not fit them"


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


def tiny_reference(task, tokenizer, sft_steps=None):
    """A 2-layer Llama fitted by plain next-token training to the task's responses (chosen and rejected), for
    ``sft_steps`` steps (default SFT_STEPS). fdpg_divergences.py and inpo_rounds.py start from the same one."""
    sft_steps = SFT_STEPS if sft_steps is None else sft_steps
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
    for step in range(sft_steps):
        chosen = torch.randint(len(sequences), (SFT_BATCH,), generator=generator).tolist()
        batch = pad_sequences([sequences[i] for i in chosen], tokenizer.pad_token_id)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"tiny reference: {sum(p.numel() for p in model.parameters())} parameters, vocabulary {len(tokenizer)}, "
          f"response NLL per token after {sft_steps} steps {loss.item():.2f}", flush=True)
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
    from prefopt.chat import as_response
    from prefopt.logprobs import score

    # a sampled text answers a conversational prompt as an assistant message
    responses = [as_response(prompt, text) for prompt, text in zip(prompts, responses)]
    return score(model, tokenizer, prompts, responses, batch_size=16).logps.double()


def sample(model, tokenizer, prompts, seed):
    from prefopt.online import generate

    samples = generate(model, tokenizer, prompts, n=SAMPLES, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
                       seed=seed, batch_size=8, progress=False)
    return [text for group in samples for text in group]


def training_args(loss, output_dir, seed, **overrides):
    """The same training settings for every run (a mode's driver may change the step count or batch size)."""
    from prefopt import PrefOptConfig

    settings = dict(
        output_dir=output_dir, loss=loss, max_steps=STEPS, per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_length=MAX_LENGTH, logging_steps=max(1, STEPS),
        save_strategy="no", report_to=[], seed=seed, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
    )
    return PrefOptConfig(**{**settings, **overrides})


def task_reward(task):
    from prefopt.rewards import FunctionReward

    return FunctionReward(task.reward)


def train_offline(run, seed, output_dir, reference, tokenizer, lora, data, task):
    """pairwise / kwise: prefopt.Trainer on the task's labelled rows, shuffled by the seed."""
    from prefopt import Trainer

    policy = copy.deepcopy(reference).train()
    trainer = Trainer(policy, args=training_args(run.loss, output_dir, seed), train_dataset=data[run.mode].shuffle(seed=seed),
                      processing_class=tokenizer, peft_config=lora)
    return trainer.model, trainer.train().training_loss, {}


def train_rounds(run, seed, output_dir, reference, tokenizer, lora, data, task):
    """online rounds: ROUNDS rounds of sample ONLINE_SAMPLES per prompt -> best vs worst under the task's reward
    (Bradley-Terry oracle) -> STEPS / ROUNDS steps of BATCH_SIZE pairs (prefopt.online.train_online)."""
    from prefopt.online import OnlineConfig, train_online

    config = OnlineConfig(rounds=ROUNDS, samples_per_prompt=ONLINE_SAMPLES, max_new_tokens=MAX_NEW_TOKENS,
                          temperature=TEMPERATURE, eval_samples_per_prompt=1)
    prompts = data["prompts"][: STEPS // ROUNDS * BATCH_SIZE]
    result = train_online(copy.deepcopy(reference).train(), tokenizer, prompts, loss=run.loss, reward=task_reward(task),
                          args=training_args(run.loss, output_dir, seed, max_steps=STEPS // ROUNDS), config=config,
                          peft_config=lora, eval_prompts=prompts[:BATCH_SIZE])  # its own per-round metrics: kept small
    losses = [entry["train_loss"] for entry in result.history]
    return result.model, sum(losses) / len(losses), {"rounds": result.history}


def train_on_policy(run, seed, output_dir, reference, tokenizer, lora, data, task):
    """on-policy: prefopt.methods.fdpg.trainer.FDPGTrainer towards P = pi_ref exp(r / beta) (target="rlhf", the task's reward, beta its
    default), STEPS steps of 2 x BATCH_SIZE / FDPG_SAMPLES prompts x FDPG_SAMPLES samples."""
    from prefopt.methods.fdpg.trainer import FDPGTrainer

    prompts_per_step = max(1, 2 * BATCH_SIZE // FDPG_SAMPLES)
    trainer = FDPGTrainer(copy.deepcopy(reference).train(), tokenizer, data["prompts"][: STEPS * prompts_per_step], target="rlhf",
                          reward=task_reward(task), samples_per_prompt=FDPG_SAMPLES, max_new_tokens=MAX_NEW_TOKENS,
                          temperature=TEMPERATURE, peft_config=lora,
                          args=training_args(run.loss, output_dir, seed, per_device_train_batch_size=prompts_per_step))
    training_loss = trainer.train().training_loss
    last = next((log for log in reversed(trainer.state.log_history) if "fdpg/divergence" in log), {})
    return trainer.model, training_loss, {"fdpg_last_log": {key: value for key, value in last.items() if key.startswith("fdpg/")},
                                          "target_beta": trainer.target_beta}


def fdpg_beta():
    """FDPGTrainer's default beta of the RLHF target, which the on-policy runs keep."""
    import inspect

    from prefopt.methods.fdpg.trainer import FDPGTrainer

    return inspect.signature(FDPGTrainer).parameters["beta"].default


trainers = {"pairwise": train_offline, "kwise": train_offline, "online rounds": train_rounds, "on-policy": train_on_policy}


def train_and_measure(run, seed, reference, tokenizer, lora, data, evaluation):
    """Train one run from the reference in its mode; its held-out metrics."""
    from transformers import set_seed

    from prefopt.losses import get_loss
    from prefopt.main_job import preference_metrics, sequence_logps

    set_seed(seed)
    task = evaluation["task"]
    with tempfile.TemporaryDirectory(prefix="prefopt-compare-") as output_dir:
        reset_peak_memory()
        started, cpu_started = time.time(), time.process_time()
        policy, training_loss, details = trainers[run.mode](run, seed, output_dir, reference, tokenizer, lora, data, task)
        wall, cpu = time.time() - started, time.process_time() - cpu_started
        memory = peak_memory_gib()
    if not torch.isfinite(torch.tensor(training_loss)):
        raise FloatingPointError(f"{run.label} seed {seed}: training loss {training_loss}")
    policy.eval()
    beta = get_loss(run.loss).hyperparameters.get("beta", details.get("target_beta", BETA))
    preference = preference_metrics(sequence_logps(policy, tokenizer, evaluation["test_rows"]), evaluation["reference_logps"], beta=beta)

    prompts = evaluation["sample_prompts"]
    policy_samples = sample(policy, tokenizer, evaluation["prompts"], seed + 1000)
    reference_samples = evaluation["reference_samples"][seed]
    outcomes = []
    for prompt, mine, theirs in zip(prompts, policy_samples, reference_samples):
        difference = task.reward(prompt, mine) - task.reward(prompt, theirs)
        outcomes.append(1.0 if difference > 0 else 0.0 if difference < 0 else 0.5)
    log_ratio = responses_logps(policy, tokenizer, prompts, policy_samples) - responses_logps(reference, tokenizer, prompts, policy_samples)
    del policy
    return {
        "label": run.label, "loss": run.loss, "mode": run.mode, "seed": seed, "beta": beta, "train_loss": training_loss,
        "preference_accuracy": preference["reward_accuracy"], "reward_margin": preference["reward_margin"],
        "win_rate": sum(outcomes) / len(outcomes), "ties": outcomes.count(0.5) / len(outcomes),
        "true_reward": sum(task.reward(p, s) for p, s in zip(prompts, policy_samples)) / len(prompts),
        "kl": float(log_ratio.mean()), "wall_seconds": wall, "cpu_seconds": cpu, "peak_memory_gib": memory, **details,
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
    print(f"{len(runs_planned)} runs x {len(SEEDS)} seeds on {TASK!r}: {', '.join(f'{run.label} ({run.mode})' for run in runs_planned)}",
          flush=True)
    reference, tokenizer, lora = load_reference(task)
    data = {form: task.load(form, split="train").select(range(min(TRAIN_ROWS, len(task.load(form, split="train")))))
            for form in ("pairwise", "kwise") if any(run.mode == form for run in runs_planned)}
    train_pairs = task.load("pairwise", split="train")
    data["prompts"] = train_pairs.select(range(min(TRAIN_ROWS, len(train_pairs))))["prompt"]  # the online modes' prompts
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
    for planned in runs_planned:
        for seed in SEEDS:
            run = train_and_measure(planned, seed, reference, tokenizer, lora, data, evaluation)
            runs.append(run)
            print(f"{planned.label} seed {seed}: win {run['win_rate']:.3f}, accuracy {run['preference_accuracy']:.3f}, "
                  f"KL {run['kl']:.3f}, {run['wall_seconds']:.1f} s", flush=True)

    summary = []
    for planned in runs_planned:
        mine = [r for r in runs if r["label"] == planned.label]
        summary.append({"label": planned.label, "loss": planned.loss, "mode": planned.mode,
                        **{metric: interval([r[metric] for r in mine]) for metric in METRICS}})
    summary.sort(key=lambda row: -row["win_rate"]["mean"])
    row = {r["label"]: r for r in summary}
    modes = {mode: sorted(run.label for run in runs_planned if run.mode == mode) for mode in dict.fromkeys(run.mode for run in runs_planned)}
    record = {"settings": settings(globals()), "environment": environment(started), "preset": "smoke" if arguments.smoke else "full" if full else "quick",
              "reference_true_reward": interval(reference_reward), "summary": summary, "runs": runs,
              "not_trained": [{"loss": loss, "why": why} for loss, why in skipped], "modes": modes,
              "drivers": {mode: DRIVERS.get(mode, "prefopt.Trainer") for mode in modes}}

    model_words = ("a tiny word-level Llama built and fitted in-script" if MODEL == "tiny"
                   else "SmolLM2-135M-Instruct with LoRA")
    prompts_per_step = max(1, 2 * BATCH_SIZE // FDPG_SAMPLES)
    lines = [
        f"Every loss that can train on the {TASK!r} task, in its own mode, {STEPS} optimizer steps, learning rate {LEARNING_RATE}, "
        f"registry-default hyper-parameters, from {model_words}; mean [95% t-interval] over {len(SEEDS)} seeds. "
        f"Win rate: the task's reward of the policy's samples against the reference's ({EVAL_PROMPTS} held-out prompts x "
        f"{SAMPLES} samples, ties 1/2). Sorted by win rate.",
        "",
        f"Budget, the same {STEPS} steps and {2 * BATCH_SIZE} scored responses per step in every mode: pairwise / kwise "
        f"{STEPS} steps x {BATCH_SIZE} labelled rows (prefopt.Trainer); online rounds {ROUNDS} rounds x {STEPS // ROUNDS} steps "
        f"x {BATCH_SIZE} pairs (prefopt.online.train_online: each round samples {ONLINE_SAMPLES} responses for each of "
        f"{len(data['prompts'][: STEPS // ROUNDS * BATCH_SIZE])} training prompts from the current policy and pairs the best and worst under the task's "
        f"reward as a Bradley-Terry oracle); on-policy {STEPS} steps x {prompts_per_step} prompts x {FDPG_SAMPLES} samples "
        f"(prefopt.methods.fdpg.trainer.FDPGTrainer, target='rlhf' with the task's reward, beta {fdpg_beta()}). The online modes also sample, which "
        "their train times include, and never see the task's labelled responses.",
        "",
        "| loss | mode | win rate vs reference | true reward | held-out preference accuracy | reward margin | KL(pi \\|\\| pi_ref) | "
        "train wall s | train CPU s | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cells in summary:
        lines.append(f"| {cells['label']} | {cells['mode']} | " + " | ".join(
            format_interval(cells[metric], digits) for metric, digits in (
                ("win_rate", 3), ("true_reward", 3), ("preference_accuracy", 3), ("reward_margin", 3), ("kl", 3),
                ("wall_seconds", 1), ("cpu_seconds", 1), ("peak_memory_gib", 2))) + " |")
    lines += ["", f"Reference policy's mean true reward: {format_interval(record['reference_true_reward'], 3)}; "
              "a win rate of 0.5 is no change.", ""]
    rounds = [r for r in runs if "rounds" in r]
    if rounds:
        lines.append("Online rounds, pairs trained per round, mean over seeds (a prompt whose best and worst samples tie "
                     "under the oracle gives none, counted as a tie): " + "; ".join(
                         f"{label}: " + ", ".join(
                             f"round {number + 1} {sum(r['rounds'][number]['pairs'] for r in mine) / len(mine):.1f} "
                             f"(ties {sum(r['rounds'][number]['skipped_ties'] for r in mine) / len(mine):.1f})"
                             for number in range(ROUNDS))
                         for label in dict.fromkeys(r["label"] for r in rounds)
                         for mine in [[r for r in rounds if r["label"] == label]]) + ".")
        lines.append("")
    if "dpo" in row:
        lines.append("Against dpo (95% intervals; a win rate interval that excludes 0.5 is a change from the reference):")
        lines.append("")
        for cells in summary:
            lines.append(f"- {cells['label']}, {cells['mode']}: win rate {versus(cells['win_rate'], row['dpo']['win_rate'], 'dpo')}, "
                         f"{versus(cells['win_rate'], {'low': 0.5, 'high': 0.5}, 'the reference (0.5)')}; "
                         f"preference accuracy {versus(cells['preference_accuracy'], row['dpo']['preference_accuracy'], 'dpo')}; "
                         f"KL {versus(cells['kl'], ZERO, 'zero')}.")
        lines.append("")
    lines.append("Not trained (neither a field provider nor an online driver fills what they need on this task): " +
                 "; ".join(f"{loss}: {why}" for loss, why in skipped) + ".")
    lines += ["", f"Environment: {record['environment']}"]
    write(arguments.output, name, record, lines)

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 0.3 * len(summary) + 2.5), sharey=True)
    labels = [f"{cells['label']} ({cells['mode']})" for cells in summary]
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
