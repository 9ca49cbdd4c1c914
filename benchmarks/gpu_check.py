"""GPU check: prefopt against TRL on one GPU, and the GPU paths no CPU test reaches, in one run of under 8 minutes.

Four parts. Each one that breaks fails loudly: its name, error and traceback go into the results file and to
stderr, the remaining parts still run, and the script exits non-zero at the end. Nothing is skipped.

1. ``throughput``: trl.DPOTrainer 1.16 against prefopt.Trainer on the ~1B Llama of ANCHORS.md (built from a config,
   `throughput.LLAMA_1B`), 400/200 tokens, 8 pairs/step, for ``lora-bf16`` and ``qlora-4bit`` (nf4, loaded through a
   temporary checkpoint by `throughput.make_model`), each configuration in its own subprocess so its peak memory
   (torch.cuda.max_memory_allocated) is its own, baseline and candidate alternating. Two comparisons:
     ``matched``          TRL against prefopt's defaults, same settings both sides (no gradient checkpointing, reference
                          computed online every step). Target: prefopt >= 2x TRL's pairs/s.
     ``best_vs_default``  TRL as DPOConfig configures it by default (gradient checkpointing ON) against prefopt's best
                          settings: prefix sharing, ``precompute_ref_log_probs=True`` (the cached reference; the
                          precompute runs while the trainer is built, outside the timed steps, as in ANCHORS.md), no
                          gradient checkpointing. Target: >= 3x.
   A run's figure is the median of its timed steps after warm-up; a figure over rounds is the median of the rounds'.
   Reported per configuration: s/step, pairs/s, the ratio to its baseline and whether the target was met (a missed
   target is a measurement, not a failure), peak GiB, MFU on useful tokens (throughput.py's formula: useful tokens/s
   x 6 x parameters / the GPU's dense bf16 peak; useful tokens of a pair = prompt + chosen + rejected), whether
   prefopt's packed path fell back to the plain layout (``packing_fallback``), whether gradient checkpointing was
   really on and the reference really precomputed. The part fails if any configuration fails to run.
2. ``packing``: packed against plain per-token log-probs in bf16 on the GPU: a prefopt.Trainer (``bf16=True``, LoRA)
   on the 1B model in bf16 and one batch of 2 pairs at 400/200; ``trainer.compute_loss`` must take the packed path
   (``trainer.packing_fallback_reason is None``, else the part fails, still recording the figures below, which say by
   how much packed and plain disagreed). Recorded: the max and mean absolute difference
   per response token between `packing.packed_forward` (the trainer's layout, and the shared block-mask layout) and
   `packing.plain_forward_logps`, and between the plain path and itself on the batch right-padded by
   PAD_COLUMNS columns.
3. ``generate_4bit``: `prefopt.online.generate` on the 1B model loaded 4-bit (nf4), 8 prompts x n=2 x 32 new
   tokens; samples/s. Fails if the model holds no 4-bit layer, or any prompt lacks its 2 strings, or all are empty.
4. ``online_round``: one round of `prefopt.online.train_online` (INPO, LoRA) on the 1B model in bf16 with a Python
   reward (the response's length in characters), 8 prompts. Fails if it raises or the round's metrics are missing
   or not finite (a NaN train loss means the round trained nothing).

Run order: parts 2-4 first (a minute), then part 1, whose mandatory runs are one round of every configuration; a
second round of the LoRA configurations runs only while the whole script stays inside BUDGET_SECONDS.

Estimated time on one H100 (not yet measured): start-up and imports ~15 s; packing ~15 s; generate_4bit ~30 s
(the 4-bit load through a 2 GB checkpoint dominates); online_round ~30 s; throughput ~280 s for one round (4 LoRA
runs of ~25 s: subprocess start, TRL import, model build, 3 warm-up + 8 timed steps of ~0.3 s; 4 QLoRA runs of
~45 s), plus ~100 s for the second LoRA round if the budget allows: 6-7.5 minutes in all.

On the device machine (the repo's working tree is copied there; the missing packages travel as wheels built by
``bash benchmarks/gpu_wheels.sh``, ~27 MiB; prefopt itself is installed from the copied tree into the same
folder, because its ``prefopt.losses`` and ``prefopt.data`` live in top-level folders that only an install maps),
the device tool's ``run`` with ``carry: [".whl"]`` and ``timeout_s: 600`` (the whole log comes back too):

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl . && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --output $OUT 2>&1 | tee $OUT/gpu_check.log

--smoke runs every part on the CPU with the tiny Llama (`throughput.TINY`), 24/8 tokens, bf16 weights (4-bit through
bitsandbytes' CPU backend), one torch thread, and the throughput configurations in-process (a subprocess each would
spend most of the run importing TRL): it checks the script, not the claims.

Writes gpu_check.json (every part: ok, seconds, result or error and traceback), gpu_check.md (the tables) and
gpu_check.png (pairs/s per configuration) into --output (default benchmarks/results; a --smoke run defaults to a
fresh temporary folder). Both files are rewritten after every part, so a run cut short keeps what it measured.

    python benchmarks/gpu_check.py                     # one GPU (writes benchmarks/results/gpu_check.*)
    python benchmarks/gpu_check.py --smoke             # CPU, tiny model, every part, well under a minute (CI)
    python benchmarks/gpu_check.py --parts packing     # a subset (comma-separated), e.g. to rerun one part
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # the side-by-side benchmark: make_model, make_tokenizer, make_dataset, LORA, LLAMA_1B, ...

# --- settings ----------------------------------------------------------------------------------
GPU = {
    "model": "llama1b", "prompt": 400, "response": 200, "pairs": 8,
    "precisions": ["lora-bf16", "qlora-4bit"], "rounds": {"lora-bf16": 2, "qlora-4bit": 1}, "warmup": 3, "steps": 8,
    "packing_pairs": 2, "generate_prompts": 8, "generate_n": 2, "generate_tokens": 32,
    "online_prompts": 8, "online_prompt_tokens": 64, "online_samples": 4, "online_tokens": 16,
    "in_process": False,  # every throughput configuration in its own subprocess (its own peak memory)
}
SMOKE = {
    "model": "tiny", "prompt": 24, "response": 8, "pairs": 2,
    "precisions": ["lora-bf16", "qlora-4bit"], "rounds": {"lora-bf16": 1, "qlora-4bit": 1}, "warmup": 1, "steps": 2,
    "packing_pairs": 2, "generate_prompts": 8, "generate_n": 2, "generate_tokens": 8,
    "online_prompts": 8, "online_prompt_tokens": 16, "online_samples": 4, "online_tokens": 8,
    "in_process": True,  # no subprocess per configuration: each would spend ~15 s importing TRL on a small CPU
}
# configuration -> (trainer, config fields over the shared ones); a field left out keeps the config class's default
CONFIGS = {
    "trl": ("trl", {"gradient_checkpointing": False}),
    "prefopt": ("prefopt", {"gradient_checkpointing": False}),
    "trl_default": ("trl", {}),  # DPOConfig's defaults: gradient_checkpointing=True
    "prefopt_best": ("prefopt", {"gradient_checkpointing": False, "prefix_sharing": True, "precompute_ref_log_probs": True}),
}
# comparison -> (baseline, candidate, target ratio of pairs/s)
COMPARISONS = {"matched": ("trl", "prefopt", 2.0), "best_vs_default": ("trl_default", "prefopt_best", 3.0)}
PARTS = ("throughput", "packing", "generate_4bit", "online_round")  # as reported
RUN_ORDER = ("packing", "generate_4bit", "online_round", "throughput")  # the long part last
PAD_COLUMNS = 64  # extra right padding of the plain path's self-comparison
BUDGET_SECONDS = 450  # the whole script; optional extra throughput rounds start only if they fit
JOB_TIMEOUT_SECONDS = 300  # one throughput configuration (a hang fails the part instead of eating the device time)
OUTPUT = Path(__file__).parent / "results"
NAME = "gpu_check"


# --- shared helpers -----------------------------------------------------------------------------

def build_model(kind: str, precision: str, device: str):
    """`throughput.make_model`, a bf16/float32 model built directly on ``device`` (initialising 1B parameters on the
    GPU takes a fraction of a second instead of seconds on the CPU); 4-bit goes through make_model's checkpoint."""
    import torch

    if precision == "qlora-4bit" or device == "cpu":
        return throughput.make_model(kind, precision, device)
    try:
        with torch.device(device):
            return throughput.make_model(kind, precision, device)
    except Exception:  # noqa: BLE001 - only a speed-up: build as throughput.py does
        traceback.print_exc()
        print("gpu_check: building on the device failed (above); building on the CPU", file=sys.stderr, flush=True)
        return throughput.make_model(kind, precision, device)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def shared_config(device: str, output_dir: str, **fields) -> dict:
    """The settings every trainer here shares (throughput.measure's, less gradient_checkpointing)."""
    return dict(output_dir=output_dir, learning_rate=1e-5, bf16=True, use_cpu=device == "cpu", report_to="none",
                save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, max_length=None,
                seed=0, beta=0.1, **fields)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finite(value):
    """JSON-safe: non-finite floats as strings ('nan', 'inf'), so they stay visible without breaking the JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# --- part 1: throughput (one configuration per subprocess) -------------------------------------

def measure(job: dict) -> dict:
    """Train warmup + steps optimizer steps of one configuration (`CONFIGS`); step times, peak memory."""
    import torch

    from prefopt import PrefOptConfig, Trainer  # first: it silences bitsandbytes' optional-kernel message

    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    device = job["device"]
    model, parameters = build_model(job["model"], job["precision"], device)
    vocab_size = model.config.vocab_size
    tokenizer = throughput.make_tokenizer(vocab_size)
    total_steps = job["warmup"] + job["steps"]
    dataset = throughput.make_dataset(job["pairs"] * total_steps, job["prompt"], job["response"], 2, vocab_size, seed=0)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.started = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.times.append(time.perf_counter() - self.started)

    trainer_name, fields = CONFIGS[job["config"]]
    folder = tempfile.mkdtemp(prefix="prefopt-gpu-check-")
    common = shared_config(device, folder, per_device_train_batch_size=job["pairs"], max_steps=total_steps, **fields)
    if trainer_name == "trl":
        config, trainer_class = DPOConfig(**common), DPOTrainer
    else:  # a fresh reference cache: precompute_ref_log_probs really computes
        config, trainer_class = PrefOptConfig(**common, loss="dpo", ref_logps_cache_dir=folder), Trainer
    timer = StepTimer()
    started = time.perf_counter()
    trainer = trainer_class(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=LoraConfig(**throughput.LORA), callbacks=[timer])
    synchronize(device)
    setup_seconds = time.perf_counter() - started  # tokenising, PEFT wrapping and, with it, the precompute
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = timer.times[job["warmup"]:]
    return {**job, "trainer": trainer_name, "step_seconds": timed, "median_step_seconds": statistics.median(timed),
            "setup_seconds": setup_seconds, "parameters": parameters, "peak_memory_gib": peak_memory_gib(device),
            "gradient_checkpointing": getattr(config, "gradient_checkpointing", None),
            "gradient_checkpointing_active": any(getattr(m, "gradient_checkpointing", False) is True
                                                 for m in trainer.model.modules()),
            "reference_precomputed": "ref_chosen_logps" in (trainer.train_dataset.column_names or []),
            "packing_fallback": getattr(trainer, "packing_fallback_reason", None)}


def run_job(job: dict, in_process: bool) -> dict:
    """One configuration: in a fresh subprocess (its own peak memory), or here (the smoke run's shortcut)."""
    if in_process:
        result = measure(job)
        free_memory()
        return result
    command = [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(job)]
    try:
        completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=JOB_TIMEOUT_SECONDS,
                                   env={**os.environ, **throughput.THREAD_ENVIRONMENT})
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"configuration {job} ran past {JOB_TIMEOUT_SECONDS} s:\n{(error.stderr or b'')[-4000:]!r}") from None
    if completed.returncode != 0:
        raise RuntimeError(f"configuration {job} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def check_throughput(settings: dict, device: str, started: float) -> dict:
    gpu_name = None
    if device == "cuda":
        import torch

        gpu_name = torch.cuda.get_device_name(0)
    peak_flops = next((v for k, v in throughput.PEAK_BF16_FLOPS.items() if gpu_name and k in gpu_name), None)
    base = {"model": settings["model"], "device": device, "prompt": settings["prompt"], "response": settings["response"],
            "pairs": settings["pairs"], "warmup": settings["warmup"], "steps": settings["steps"]}
    runs, errors, durations = [], [], {}

    def run_pair(precision: str, comparison: str, round_index: int) -> None:
        baseline, candidate, _ = COMPARISONS[comparison]
        order = [baseline, candidate] if round_index % 2 == 0 else [candidate, baseline]
        for config in order:
            job = {**base, "config": config, "precision": precision, "round": round_index}
            job_started = time.time()
            try:
                result = run_job(job, settings["in_process"])
            except Exception as error:  # noqa: BLE001 - recorded; the other configurations still run
                errors.append(f"{precision} {config} round {round_index}: {error}")
                print(f"throughput: {precision} {config} round {round_index} FAILED:\n{error}", file=sys.stderr, flush=True)
                continue
            durations[(precision, config)] = time.time() - job_started
            runs.append(result)
            print(f"throughput round {round_index} {precision} {config}: {result['median_step_seconds']:.3f} s/step, "
                  f"{result['peak_memory_gib']:.2f} GiB, {durations[(precision, config)]:.0f} s", flush=True)

    for precision in settings["precisions"]:  # one round of everything first: the mandatory figures
        for comparison in COMPARISONS:
            run_pair(precision, comparison, 0)
    extra_rounds = []
    for round_index in range(1, max(settings["rounds"].values())):
        for precision in settings["precisions"]:
            if round_index >= settings["rounds"][precision]:
                continue
            for comparison in COMPARISONS:
                baseline, candidate, _ = COMPARISONS[comparison]
                estimate = sum(durations.get((precision, c), JOB_TIMEOUT_SECONDS) for c in (baseline, candidate))
                fits = time.time() - started + estimate < BUDGET_SECONDS
                extra_rounds.append({"precision": precision, "comparison": comparison, "round": round_index,
                                     "estimated_seconds": round(estimate), "ran": fits})
                if fits:
                    run_pair(precision, comparison, round_index)
    result = {"summary": summarise(runs, peak_flops), "runs": runs, "extra_rounds": extra_rounds, "gpu": gpu_name,
              "peak_bf16_flops": peak_flops, "errors": errors}
    if errors:
        raise PartFailed(f"{len(errors)} configuration(s) failed:\n\n" + "\n\n".join(errors), result)
    missing = [(p, c) for p in settings["precisions"] for c in CONFIGS if not any(
        r["precision"] == p and r["config"] == c for r in runs)]
    if missing:
        raise PartFailed(f"no measurement for {missing}", result)
    return result


def summarise(runs: list[dict], peak_flops: float | None) -> list[dict]:
    """One row per (comparison, precision, configuration): the figures over rounds, and the candidate's ratio."""
    rows = []
    for comparison, (baseline, candidate, target) in COMPARISONS.items():
        for precision in dict.fromkeys(r["precision"] for r in runs):
            entries = {}
            for config in (baseline, candidate):
                measured = [r for r in runs if r["precision"] == precision and r["config"] == config]
                if not measured:
                    continue
                first = measured[0]
                step = statistics.median(r["median_step_seconds"] for r in measured)
                useful_tokens = first["pairs"] * (first["prompt"] + 2 * first["response"])
                entry = {"comparison": comparison, "precision": precision, "config": config, "trainer": first["trainer"],
                         "role": "baseline" if config == baseline else "candidate", "prompt": first["prompt"],
                         "response": first["response"], "pairs_per_step": first["pairs"], "rounds": len(measured),
                         "step_seconds": step, "step_seconds_range": [min(r["median_step_seconds"] for r in measured),
                                                                      max(r["median_step_seconds"] for r in measured)],
                         "pairs_per_second": first["pairs"] / step, "useful_tokens_per_second": useful_tokens / step,
                         "peak_memory_gib": max(r["peak_memory_gib"] for r in measured),
                         "setup_seconds": statistics.median(r["setup_seconds"] for r in measured),
                         "mfu": useful_tokens / step * 6 * first["parameters"] / peak_flops if peak_flops else None,
                         "gradient_checkpointing_active": first["gradient_checkpointing_active"],
                         "reference_precomputed": first["reference_precomputed"],
                         "packing_fallback": next((r["packing_fallback"] for r in measured if r["packing_fallback"]), None)}
                entries[config] = entry
            if baseline in entries and candidate in entries:
                ratio = entries[candidate]["pairs_per_second"] / entries[baseline]["pairs_per_second"]
                entries[candidate].update(vs_baseline=ratio, target=target, target_met=ratio >= target,
                                          peak_memory_vs_baseline=entries[candidate]["peak_memory_gib"]
                                          / entries[baseline]["peak_memory_gib"])
            rows += entries.values()
    return rows


# --- part 2: packed against plain log-probs ------------------------------------------------------

def check_packing(settings: dict, device: str) -> dict:
    import torch
    from peft import LoraConfig

    from prefopt import PrefOptConfig, Trainer
    from prefopt.training import packing, packing_check

    model, _ = build_model(settings["model"], "lora-bf16", device)
    vocab_size = model.config.vocab_size
    dataset = throughput.make_dataset(settings["packing_pairs"], settings["prompt"], settings["response"], 2, vocab_size, seed=1)
    folder = tempfile.mkdtemp(prefix="prefopt-gpu-check-")
    args = PrefOptConfig(**shared_config(device, folder, per_device_train_batch_size=settings["packing_pairs"],
                                         gradient_checkpointing=False), loss="dpo", ref_logps_cache_dir=folder)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=throughput.make_tokenizer(vocab_size),
                      peft_config=LoraConfig(**throughput.LORA))
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: v.to(trainer.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    trainer.model.train()
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(trainer.model, inputs)
    fallback = trainer.packing_fallback_reason  # None: the trainer verified the packed path on this batch and took it
    model = trainer.model.eval()
    scored = inputs["completion_mask"][:, 1:].bool()

    def difference(first, second) -> dict:
        values = (first.float() - second.float()).abs()[scored]
        return {"max": values.max().item(), "mean": values.mean().item(), "tokens": int(values.numel())}

    def layout(attention_cost: float):
        return packing.build_layout(
            inputs["input_ids"].cpu(), inputs["attention_mask"].cpu(), inputs["completion_mask"].cpu(),
            inputs["response_index"].cpu(), prefix_sharing=args.prefix_sharing, padding_free=args.padding_free,
            pad_token_id=trainer.forward.pad_token_id, attention_cost=attention_cost)

    width = inputs["input_ids"].size(1)
    padded = dict(inputs)
    for key, value in (("input_ids", trainer.forward.pad_token_id), ("attention_mask", 0), ("completion_mask", 0)):
        padded[key] = torch.nn.functional.pad(inputs[key], (0, PAD_COLUMNS), value=value)
    layouts = {"trainer": layout(packing.attention_cost(model)), "shared_block_mask": layout(0.0)}
    with torch.no_grad(), trainer.accelerator.autocast():
        plain = packing.plain_forward_logps(model, inputs)
        result = {"loss": loss.item(), "packing_fallback": fallback, "plain_dtype": str(plain.dtype),
                  "rows": int(inputs["input_ids"].size(0)), "columns": width, "layouts": {}}
        for name, packed_layout in layouts.items():
            packed = packing.packed_forward(model, packed_layout).log_probs
            shifted = packing_check.shifted_plain_logps(model, inputs, packed_layout.input_ids.size(1))
            result["layouts"][name] = {
                "one_sequence_per_row": packed_layout.one_sequence_per_row, "packed_shape": list(packed_layout.input_ids.shape),
                "packed_vs_plain": difference(packed, plain),
                "plain_vs_shifted_plain": difference(shifted, plain),  # the spread packing_check allows 4x of
                "check": packing_check.verify(model, inputs, packed_layout) or "passed"}
        plain_padded = packing.plain_forward_logps(model, padded)[:, : width - 1]
        result["plain_vs_plain_padded"] = {**difference(plain_padded, plain), "extra_columns": PAD_COLUMNS}
    result["packed_vs_plain"] = result["layouts"]["trainer"]["packed_vs_plain"]
    if fallback is not None:  # the differences above are kept: they say by how much
        raise PartFailed(f"the packed path fell back to the plain one: {fallback}", result)
    if not math.isfinite(result["loss"]):
        raise PartFailed(f"the packed step's loss is {result['loss']}", result)
    return result


# --- part 3: generate on a 4-bit model -----------------------------------------------------------

def check_generate(settings: dict, device: str) -> dict:
    from prefopt.online import generate

    model, _ = throughput.make_model(settings["model"], "qlora-4bit", device)
    quantized = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    if not quantized:
        raise AssertionError("the model holds no bitsandbytes Linear4bit layer: it was not loaded 4-bit")
    tokenizer = throughput.make_tokenizer(model.config.vocab_size)
    prompts = throughput.make_dataset(settings["generate_prompts"], settings["prompt"], 1, 2, model.config.vocab_size,
                                      seed=2)["prompt"]
    n, tokens = settings["generate_n"], settings["generate_tokens"]
    generate(model, tokenizer, prompts[:1], n=1, max_new_tokens=2, seed=0, progress=False)  # kernels' first-call costs
    synchronize(device)
    started = time.perf_counter()
    outputs = generate(model, tokenizer, prompts, n=n, max_new_tokens=tokens, seed=0, progress=False)
    synchronize(device)
    seconds = time.perf_counter() - started
    wrong = [i for i, responses in enumerate(outputs)
             if not isinstance(responses, list) or len(responses) != n or not all(isinstance(r, str) for r in responses)]
    if len(outputs) != len(prompts) or wrong:
        raise AssertionError(f"generate returned {len(outputs)} entries for {len(prompts)} prompts; prompts without "
                             f"{n} strings: {wrong[:5]}: {outputs[:2]!r}")
    flat = [r for responses in outputs for r in responses]
    if not any(flat):
        raise AssertionError(f"every one of the {len(flat)} responses is empty")
    words = [len(r.split()) for r in flat]  # the word-level tokenizer: one word, one token
    return {"linear4bit_layers": quantized, "prompts": len(prompts), "n": n, "max_new_tokens": tokens,
            "seconds": seconds, "samples_per_second": len(flat) / seconds, "new_tokens_per_second": sum(words) / seconds,
            "mean_new_tokens": statistics.fmean(words), "empty_responses": sum(not r for r in flat),
            "example": flat[0][:80], "peak_memory_gib": peak_memory_gib(device)}


# --- part 4: one online round --------------------------------------------------------------------

ROUND_METRICS = ("round", "pairs", "skipped_ties", "train_loss", "win_rate/previous", "win_rate/reference",
                 "reward/samples", "reward/mean", "kl/reference")


def length_reward(prompts, responses):
    """The response's length in characters: a reward any sampler's output gets."""
    import torch

    return torch.tensor([float(len(response)) for response in responses])


def check_online(settings: dict, device: str) -> dict:
    from peft import LoraConfig

    from prefopt import PrefOptConfig
    from prefopt.online import OnlineConfig, train_online

    model, _ = build_model(settings["model"], "lora-bf16", device)
    tokenizer = throughput.make_tokenizer(model.config.vocab_size)
    prompts = throughput.make_dataset(settings["online_prompts"], settings["online_prompt_tokens"], 1, 2,
                                      model.config.vocab_size, seed=3)["prompt"]
    folder = tempfile.mkdtemp(prefix="prefopt-gpu-check-online-")
    args = PrefOptConfig(**{**shared_config(device, folder, per_device_train_batch_size=4, gradient_checkpointing=False,
                                            num_train_epochs=1), "learning_rate": 5e-4, "logging_steps": 1},
                         loss="inpo", ref_logps_cache_dir=folder)
    started = time.perf_counter()
    result = train_online(model, tokenizer, prompts, loss="inpo", reward=length_reward, args=args, rounds=1,
                          samples_per_prompt=settings["online_samples"], peft_config=LoraConfig(**throughput.LORA),
                          config=OnlineConfig(max_new_tokens=settings["online_tokens"], eval_samples_per_prompt=2))
    seconds = time.perf_counter() - started
    if len(result.history) != 1:
        raise AssertionError(f"one round asked for, {len(result.history)} in the history: {result.history}")
    metrics = result.history[0]
    missing = [key for key in ROUND_METRICS if key not in metrics]
    if missing:
        raise AssertionError(f"the round's metrics lack {missing}: {metrics}")
    not_finite = {key: metrics[key] for key in ROUND_METRICS if not math.isfinite(float(metrics[key]))}
    if not_finite:
        raise AssertionError(f"non-finite round metrics (a NaN train_loss: nothing trained): {not_finite}")
    return {"metrics": {key: metrics[key] for key in ROUND_METRICS}, "seconds": seconds, "prompts": len(prompts),
            "samples_per_prompt": settings["online_samples"], "max_new_tokens": settings["online_tokens"],
            "loss": "inpo", "peak_memory_gib": peak_memory_gib(device)}


# --- the driver ---------------------------------------------------------------------------------

class PartFailed(AssertionError):
    """A part's failure that still carries what it measured."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def run_part(name: str, settings: dict, device: str, started: float) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    part_started = time.time()
    record = {"ok": False, "seconds": None, "result": None, "error": None, "traceback": None}
    try:
        if name == "throughput":
            record["result"] = check_throughput(settings, device, started)
        elif name == "packing":
            record["result"] = check_packing(settings, device)
        elif name == "generate_4bit":
            record["result"] = check_generate(settings, device)
        else:
            record["result"] = check_online(settings, device)
        record["ok"] = True
    except Exception as error:  # noqa: BLE001 - recorded and reported: the part fails loudly, the others still run
        record.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                      result=getattr(error, "result", None))
        print(f"\n=== gpu_check part {name!r} FAILED ===\n{record['traceback']}", file=sys.stderr, flush=True)
    record["seconds"] = round(time.time() - part_started, 1)
    free_memory()
    print(f"gpu_check part {name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s", flush=True)
    return record


def environment(device: str) -> dict:
    """Library versions and the machine (throughput.py's record); a library that fails to import is recorded, and
    the parts that need it fail on their own."""
    import torch

    try:
        info = throughput.environment("gpu" if device == "cuda" else "smoke")
    except Exception as error:  # noqa: BLE001
        info = {"torch": torch.__version__, "error": f"{type(error).__name__}: {error}"}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as error:  # noqa: BLE001
        info["bitsandbytes"] = f"import failed: {type(error).__name__}: {error}"
    info.update(cuda=torch.version.cuda, device=device)
    return info


def table(report: dict) -> list[str]:
    mode = "smoke (CPU, tiny model)" if report["smoke"] else "GPU"
    verdict = "every part ok." if report["ok"] else f"FAILED: {', '.join(report['failed']) or 'unfinished'}."
    lines = [f"GPU check, {mode}: {verdict}", "",
             "| part | status | seconds | result |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        lines.append(f"| {name} | {part_status(part)} | {part['seconds'] if part['seconds'] is not None else ''} | "
                     f"{part_line(name, part)} |")
    throughput_part = report["parts"].get("throughput") or {}
    rows = (throughput_part.get("result") or {}).get("summary") or []
    if rows:
        lines += ["", f"Throughput (median step over rounds of {report['settings']['steps']} timed steps after "
                  f"{report['settings']['warmup']} warm-up; LoRA r=16 all linear; peak = "
                  + ("CUDA max_memory_allocated" if report["device"] == "cuda" else "process peak RSS") + ").", "",
                  ("| comparison | precision | prompt/response | configuration | rounds | s/step (range) | pairs/s | "
                   "vs baseline | target | peak GiB | MFU | grad. ckpt | ref. precomputed | packing fallback |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") is not None else ""
            target = (f">= {r['target']:.0f}x: {'met' if r['target_met'] else 'MISSED'}") if r.get("target") else ""
            lines.append(
                f"| {r['comparison']} | {r['precision']} | {r['prompt']}/{r['response']} | {r['config']} ({r['trainer']}) | "
                f"{r['rounds']} | {r['step_seconds']:.3f} ({r['step_seconds_range'][0]:.3f}-{r['step_seconds_range'][1]:.3f}) | "
                f"{r['pairs_per_second']:.3g} | {ratio} | {target} | {r['peak_memory_gib']:.2f} | "
                f"{'' if r['mfu'] is None else format(r['mfu'], '.1%')} | "
                f"{'on' if r['gradient_checkpointing_active'] else 'off'} | {'yes' if r['reference_precomputed'] else 'no'} | "
                f"{r['packing_fallback'] or ('none' if r['trainer'] == 'prefopt' else '')} |")
    for name, part in report["parts"].items():
        if part.get("error"):
            lines += ["", f"Part `{name}` failed: {part['error'].splitlines()[0]}"]
    lines += ["", f"Environment: {json.dumps(report['environment'])}"]
    return lines


def part_status(part: dict) -> str:
    if part.get("pending"):
        return "not run yet"
    return "ok" if part["ok"] else "FAILED"


def part_line(name: str, part: dict) -> str:
    result = part.get("result") or {}
    if not result:
        return ""
    if name == "throughput":
        ratios = [f"{r['comparison']} {r['precision']} {r['vs_baseline']:.2f}x" for r in result.get("summary", [])
                  if r.get("vs_baseline")]
        return "prefopt vs TRL pairs/s: " + ", ".join(ratios)
    if name == "packing":
        shown = []
        for layout_name, layout in result["layouts"].items():
            d = layout["packed_vs_plain"]
            shown.append(f"packed ({layout_name}{', one sequence per row' if layout['one_sequence_per_row'] else ''}) vs plain: "
                         f"max {d['max']:.3g}, mean {d['mean']:.3g} nats")
        d = result["plain_vs_plain_padded"]
        return "; ".join(shown) + (f"; plain vs plain +{d['extra_columns']} padding columns: max {d['max']:.3g}, "
                                   f"mean {d['mean']:.3g} ({d['tokens']} response tokens, {result['plain_dtype']})")
    if name == "generate_4bit":
        return (f"{result['prompts']} prompts x {result['n']} x {result['max_new_tokens']} tokens: "
                f"{result['samples_per_second']:.3g} samples/s, {result['new_tokens_per_second']:.3g} new tokens/s, "
                f"{result['empty_responses']} empty; "
                f"{result['linear4bit_layers']} Linear4bit layers")
    metrics = result["metrics"]
    return (f"1 round, {result['prompts']} prompts: {metrics['pairs']} pairs, train loss {metrics['train_loss']:.4g}, "
            f"reward {metrics['reward/samples']:.3g} -> {metrics['reward/mean']:.3g}, "
            f"win rate vs reference {metrics['win_rate/reference']:.3g}, KL {metrics['kl/reference']:.3g}")


def write_report(report: dict, output: Path, final: bool) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{NAME}.json").write_text(json.dumps(finite(report), indent=2, allow_nan=False))
    lines = table(report)
    (output / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    if final:
        print("\n".join(lines))
        plot(report, output)


def plot(report: dict, output: Path) -> None:
    """Pairs/s of every throughput configuration (an empty frame when the part has no figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ((report["parts"].get("throughput") or {}).get("result") or {}).get("summary") or []
    figure, axis = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['comparison']}\n{r['precision']}\n{r['config']}" for r in rows]
    colours = ["tab:grey" if r["trainer"] == "trl" else "tab:blue" for r in rows]
    axis.bar(range(len(rows)), [r["pairs_per_second"] for r in rows], color=colours)
    axis.set_xticks(range(len(rows)), labels, fontsize="x-small")
    for i, r in enumerate(rows):
        if r.get("vs_baseline"):
            axis.annotate(f"{r['vs_baseline']:.2f}x", (i, r["pairs_per_second"]), ha="center", va="bottom", fontsize="small")
    axis.set_ylabel("pairs / s")
    axis.set_title("prefopt (blue) vs TRL DPOTrainer (grey), " + ("smoke" if report["smoke"] else "GPU"))
    figure.tight_layout()
    figure.savefig(output / f"{NAME}.png", dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU with the tiny model (CI)")
    parser.add_argument("--output", type=Path, default=None, help=f"folder for the results (default {OUTPUT})")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: measure one throughput configuration
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return {}
    started = time.time()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    output = args.output or (Path(tempfile.mkdtemp(prefix="prefopt-benchmark-smoke-")) if args.smoke else OUTPUT)
    settings = dict(SMOKE if args.smoke else GPU)

    import torch

    threads = torch.get_num_threads()
    if args.smoke:  # a tiny model needs no second thread, and OpenMP's spinning threads slow every op on a shared CPU
        torch.set_num_threads(1)
    try:
        return run(args, parts, output, settings, started)
    finally:
        torch.set_num_threads(threads)


def run(args, parts: list[str], output: Path, settings: dict, started: float) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        print("gpu_check: no CUDA device; every part runs on the CPU and will be slow (use --smoke for the tiny model)",
              file=sys.stderr, flush=True)
    report = {"smoke": args.smoke, "device": device, "settings": settings, "environment": environment(device),
              "parts": {name: {"ok": False, "pending": True, "seconds": None, "result": None, "error": None,
                               "traceback": None} for name in PARTS if name in parts},
              "failed": [], "ok": False}
    write_report(report, output, final=False)
    for name in RUN_ORDER:
        if name in parts:
            report["parts"][name] = run_part(name, settings, device, started)
            report["failed"] = [n for n, part in report["parts"].items() if not part["ok"] and not part.get("pending")]
            write_report(report, output, final=False)
    report["ok"] = not report["failed"]
    report["environment"]["seconds"] = round(time.time() - started, 1)
    write_report(report, output, final=True)
    print(f"wrote {output / NAME}.{{json,md,png}} in {report['environment']['seconds']} s", flush=True)
    if report["failed"]:
        print(f"gpu_check FAILED: {', '.join(report['failed'])} (tracebacks above and in {output / NAME}.json)",
              file=sys.stderr, flush=True)
    return report


if __name__ == "__main__":
    os.environ.update(throughput.THREAD_ENVIRONMENT)  # before torch starts OpenMP (the subprocesses get it too)
    sys.exit(0 if main().get("ok", True) else 1)
