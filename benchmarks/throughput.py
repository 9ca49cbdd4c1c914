"""Training throughput: prefopt.Trainer against trl.DPOTrainer, side by side in one run.

Both trainers get the same model, data (random token ids of exact prompt/response lengths), batch,
precision, LoRA settings (r=16, alpha=32, all linear layers; reference = the adapter-disabled base),
optimizer (TRL's default AdamW) and loss (DPO sigmoid). Each measured configuration runs in its own
subprocess, so its peak memory is its own (CUDA max_memory_allocated on GPU, peak RSS on CPU), and the
configurations alternate (trl, prefopt, trl, prefopt, ...) for REPEATS rounds so that a load change on
a shared machine hits both. A step's time is the wall time of one optimizer step (forward, backward,
update) after WARMUP_STEPS; a run's figure is the median of its timed steps, and the table reports the
median over rounds (and the min-max range).

Configurations per setting (prompt tokens / response tokens):
  trl                 trl.DPOTrainer 1.16
  prefopt             prefopt.Trainer with its defaults (prefix sharing)
  prefopt_padfree     + padding_free=True
  prefopt_plain       prefix_sharing=False: TRL's layout through prefopt (should match trl)
  prefopt_cached      + precompute_ref_log_probs=True: the reference's log-probs computed once (while the trainer is
                      built, outside the timed steps, as ANCHORS.md times TRL's precompute) and cached, so a step
                      is the policy's forward and backward alone
  prefopt_k4          K=4 rankings (plackett_luce), same number of prompts per step: the cost of a
                      ranking step relative to a pair step (`k4_over_pair`)

Modes:
  cpu     the default model (prefopt.default_model(), SmolLM2-135M-Instruct), 400/200, 2 pairs/step, in float32 and
          in bf16 (bfloat16 weights and bf16=True autocast, as LoRA is trained on a GPU; TRL in the same precision)
  tiny    a tiny Llama built from a config, float32 and bf16 (weights and autocast), all settings (a quick check of
          the whole pipeline)
  gpu     a Llama-shaped ~1B model built from a config (ANCHORS.md), bf16, 8 pairs/step, all settings,
          LoRA bf16 and QLoRA 4-bit; also reports model-FLOPs utilisation on useful tokens
  --smoke a few seconds on the tiny model (the CI test)

Useful tokens of a pair = prompt + chosen + rejected (the prompt counted once). MFU = useful tokens/s x
6 x parameters / peak bf16 FLOP/s: 2N for the reference forward, 2N for the policy forward, 2N for the
policy backward to activations (LoRA freezes the base weights; adapter and attention FLOPs ignored).

    python benchmarks/throughput.py --mode cpu            # CPU target (writes benchmarks/results/throughput_cpu.*)
    python benchmarks/throughput.py --mode gpu            # one H100 (writes benchmarks/results/throughput_gpu.*)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --- settings ----------------------------------------------------------------------------------
MODES = {
    "cpu": {"model": "default", "settings": [(400, 200)], "pairs": 2, "precisions": ["float32", "bf16"],
            "repeats": 3, "warmup": 1, "steps": 3},
    "tiny": {"model": "tiny", "settings": [(400, 200), (1024, 128), (64, 512)], "pairs": 2,
             "precisions": ["float32", "bf16"], "repeats": 3, "warmup": 2, "steps": 5},
    "gpu": {"model": "llama1b", "settings": [(400, 200), (1024, 128), (64, 512)], "pairs": 8,
            "precisions": ["lora-bf16", "qlora-4bit"], "repeats": 3, "warmup": 3, "steps": 10},
    "smoke": {"model": "tiny", "settings": [(24, 8)], "pairs": 2, "precisions": ["float32"],
              "repeats": 1, "warmup": 1, "steps": 2},
}
TRAINERS = {
    "trl": {},
    "prefopt": {},
    "prefopt_padfree": {"padding_free": True},
    "prefopt_plain": {"prefix_sharing": False},
    "prefopt_cached": {"precompute_ref_log_probs": True},
    "prefopt_k4": {"responses": 4},
}
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=4096)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=4096)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU
OUTPUT = Path(__file__).parent / "results"
# OpenMP threads that spin while waiting slow every op by up to 100x on a CPU shared with other jobs; sleeping
# waits cost nothing measurable on an idle machine.
THREAD_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


# --- one measured configuration (runs in a subprocess) ------------------------------------------

def make_tokenizer(vocab_size: int):
    """Word-level tokenizer over 't<i>' words: a text of n words is exactly n tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_dataset(rows: int, prompt_tokens: int, response_tokens: int, responses: int, vocab_size: int, seed: int):
    """Random words; the appended EOS merges into the last word (still one token), so lengths are exact."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)

    def text(n):
        return " ".join(f"t{rng.randrange(3, vocab_size)}" for _ in range(n))

    prompts = [text(prompt_tokens) for _ in range(rows)]
    if responses == 2:
        return Dataset.from_dict({"prompt": prompts, "chosen": [" " + text(response_tokens) for _ in range(rows)],
                                  "rejected": [" " + text(response_tokens) for _ in range(rows)]})
    return Dataset.from_dict({"prompt": prompts,
                              "completions": [[" " + text(response_tokens) for _ in range(responses)] for _ in range(rows)]})


def make_model(kind: str, precision: str, device: str):
    """The model to train and its parameter count (before any 4-bit packing, which halves numel())."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    if kind == "default":
        import prefopt

        model, _ = prefopt.default_model(dtype=torch.float32 if precision == "float32" else torch.bfloat16)
        return model, sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    config = LlamaConfig(**(LLAMA_1B if kind == "llama1b" else TINY), pad_token_id=0, eos_token_id=1, bos_token_id=1)
    dtype = torch.bfloat16 if precision != "float32" else torch.float32
    if precision != "qlora-4bit":
        model = LlamaForCausalLM(config).to(dtype=dtype, device=device)
        return model, sum(p.numel() for p in model.parameters())
    from peft import prepare_model_for_kbit_training

    with tempfile.TemporaryDirectory() as folder:  # bitsandbytes quantises while loading a checkpoint
        full = LlamaForCausalLM(config).to(dtype)
        parameters = sum(p.numel() for p in full.parameters())
        full.save_pretrained(folder)
        del full
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=dtype,
                                                     device_map={"": device})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), parameters


def measure(job: dict) -> dict:
    """Train warmup + steps optimizer steps of one configuration; step times, peak memory."""
    import torch

    from prefopt import PrefOptConfig, Trainer  # first, as in environment()

    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    device = "cuda" if job["precision"] != "float32" and torch.cuda.is_available() else "cpu"
    model, parameters = make_model(job["model"], job["precision"], device)
    vocab_size = model.config.vocab_size
    tokenizer = make_tokenizer(vocab_size)
    options = dict(TRAINERS[job["trainer"]])
    responses = options.pop("responses", 2)
    total_steps = job["warmup"] + job["steps"]
    dataset = make_dataset(job["pairs"] * total_steps, job["prompt"], job["response"], responses, vocab_size, seed=0)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.started = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)

    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=job["pairs"], max_steps=total_steps,
                  learning_rate=1e-5, bf16=job["precision"] != "float32", use_cpu=device == "cpu",
                  gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=10**6,
                  disable_tqdm=True, dataloader_num_workers=0, max_length=None, seed=0, beta=0.1)
    if job["trainer"] == "trl":
        config, trainer_class = DPOConfig(**common), DPOTrainer
    else:
        loss = "plackett_luce" if responses > 2 else "dpo"
        config, trainer_class = PrefOptConfig(**common, loss=loss, **options), Trainer
    timer = StepTimer()
    trainer = trainer_class(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=LoraConfig(**LORA), callbacks=[timer])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = timer.times[job["warmup"]:]
    result = {**job, "device": device, "step_seconds": timed, "median_step_seconds": statistics.median(timed),
              "responses": responses,
              "parameters": parameters,
              "packing_fallback": getattr(trainer, "packing_fallback_reason", None)}
    if device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return result


# --- the driver ---------------------------------------------------------------------------------

def run_job(job: dict) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--job", json.dumps(job)], capture_output=True, text=True,
                               env={**os.environ, **THREAD_ENVIRONMENT})
    if completed.returncode != 0:
        raise RuntimeError(f"configuration {job} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_progress(runs: list[dict], mode: str, output: Path) -> None:
    """Every finished run, so a long measurement that is cut short still leaves its numbers."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"throughput_{mode}.partial.json").write_text(json.dumps(runs, indent=2))


def source_commit() -> str:
    """The git commit of the measured code, '+changes' when the working tree differs; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "prefopt", "losses", "data"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def environment(mode: str) -> dict:
    import prefopt  # first: it silences bitsandbytes' optional-kernel message, which trl/peft trigger on import

    import datasets
    import peft
    import torch
    import transformers
    import trl

    info = {"prefopt": prefopt.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "datasets": datasets.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(), "thread_environment": THREAD_ENVIRONMENT,
            "torch_threads": torch.get_num_threads(), "prefopt_commit": source_commit()}
    if mode == "gpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarise(runs: list[dict], mode: str, gpu_name: str | None) -> list[dict]:
    rows = []
    keys = sorted({(r["precision"], r["prompt"], r["response"]) for r in runs})
    for precision, prompt, response in keys:
        by_trainer = {}
        for name in TRAINERS:
            measured = [r for r in runs if r["trainer"] == name and (r["precision"], r["prompt"], r["response"]) == (precision, prompt, response)]
            if not measured:
                continue
            step = statistics.median(r["median_step_seconds"] for r in measured)
            examples = measured[0]["pairs"]
            useful_tokens = examples * (prompt + measured[0]["responses"] * response)
            entry = {"trainer": name, "precision": precision, "prompt": prompt, "response": response,
                     "examples_per_step": examples, "responses": measured[0]["responses"],
                     "step_seconds": step, "step_seconds_range": [min(r["median_step_seconds"] for r in measured),
                                                                  max(r["median_step_seconds"] for r in measured)],
                     "examples_per_second": examples / step, "useful_tokens_per_second": useful_tokens / step,
                     "peak_memory_gib": max(r["peak_memory_gib"] for r in measured),
                     "packing_fallback": measured[0]["packing_fallback"], "rounds": len(measured)}
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if gpu_name and k in gpu_name), None)
            if peak and precision != "float32":
                entry["mfu"] = useful_tokens / step * 6 * measured[0]["parameters"] / peak
            by_trainer[name] = entry
        trl_entry = by_trainer.get("trl")
        for name, entry in by_trainer.items():
            if trl_entry and entry["responses"] == 2:
                entry["pairs_per_second_vs_trl"] = entry["examples_per_second"] / trl_entry["examples_per_second"]
                entry["peak_memory_vs_trl"] = entry["peak_memory_gib"] / trl_entry["peak_memory_gib"]
            if name == "prefopt_k4" and "prefopt" in by_trainer:
                entry["k4_over_pair"] = entry["step_seconds"] / by_trainer["prefopt"]["step_seconds"]
            rows.append(entry)
    return rows


def write_report(rows: list[dict], runs: list[dict], mode: str, info: dict, settings: dict, output: Path,
                 label: str | None = None) -> None:
    """Writes throughput_<label>.{json,md,png}; the label is the mode, or the mode and the precisions of a run
    limited to some of them (``--precisions``), so such a run does not overwrite the mode's full results."""
    output.mkdir(parents=True, exist_ok=True)
    stem = output / f"throughput_{label or mode}"
    stem.with_suffix(".json").write_text(json.dumps({"settings": settings, "environment": info, "summary": rows,
                                                     "runs": runs}, indent=2))
    lines = [f"Training throughput, mode `{mode}` (median step over up to {settings['repeats']} alternating rounds of "
             f"{settings['steps']} timed steps after {settings['warmup']} warm-up; LoRA r=16 all linear).", "",
             "| precision | prompt/response | trainer | examples/step | rounds | s/step (range) | pairs/s | useful tok/s | "
             "vs TRL | peak GiB | mem vs TRL | K=4 / pair step | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(key, pattern="{:.2f}"):
            return pattern.format(r[key]) if r.get(key) is not None else ""
        lines.append(
            f"| {r['precision']} | {r['prompt']}/{r['response']} | {r['trainer']} | {r['examples_per_step']} x K={r['responses']} | {r['rounds']} | "
            f"{r['step_seconds']:.3f} ({r['step_seconds_range'][0]:.3f}-{r['step_seconds_range'][1]:.3f}) | "
            f"{r['examples_per_second']:.3g} | {r['useful_tokens_per_second']:.3g} | {fmt('pairs_per_second_vs_trl')}x | "
            f"{r['peak_memory_gib']:.2f} | {fmt('peak_memory_vs_trl')} | {fmt('k4_over_pair')} | {fmt('mfu', '{:.1%}')} |")
    fallbacks = {r["trainer"]: r["packing_fallback"] for r in rows if r.get("packing_fallback")}
    if fallbacks:
        lines += ["", f"Packing fell back to the plain layout: {fallbacks}"]
    lines += ["", "Peak memory: " + ("CUDA max_memory_allocated." if mode == "gpu" else "peak RSS of the process."),
              f"Environment: {json.dumps(info)}"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pair_rows = [r for r in rows if r["responses"] == 2]
    labels = sorted({f"{r['precision']}\n{r['prompt']}/{r['response']}" for r in pair_rows})
    trainers = [t for t in TRAINERS if any(r["trainer"] == t for r in pair_rows)]
    figure, axis = plt.subplots(figsize=(max(5, 1.8 * len(labels)), 3.5))
    width = 0.8 / max(1, len(trainers))
    for i, trainer in enumerate(trainers):
        values = []
        for label in labels:
            match = [r for r in pair_rows if r["trainer"] == trainer and f"{r['precision']}\n{r['prompt']}/{r['response']}" == label]
            values.append(match[0]["examples_per_second"] if match else 0)
        axis.bar([x + i * width for x in range(len(labels))], values, width, label=trainer)
    axis.set_xticks([x + width * (len(trainers) - 1) / 2 for x in range(len(labels))], labels)
    axis.set_ylabel("pairs / s")
    axis.set_title(f"prefopt vs TRL DPOTrainer ({mode})")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=120)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="a few seconds on the tiny model (CI)")
    parser.add_argument("--repeats", type=int, help="alternating rounds (default: the mode's)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default: the mode's)")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated subset of " + ", ".join(TRAINERS))
    parser.add_argument("--precisions", help="comma-separated subset of the mode's precisions (default: all of them)")
    parser.add_argument("--output", default=str(OUTPUT))
    parser.add_argument("--report-partial", action="store_true",
                        help="write the report from the runs finished so far (throughput_<mode>.partial.json), "
                        "for a measurement that was cut short; the report says how many rounds each figure has")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: measure one configuration
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return []
    mode = "smoke" if args.smoke else args.mode
    settings = dict(MODES[mode])
    settings["repeats"] = args.repeats or settings["repeats"]
    settings["steps"] = args.steps or settings["steps"]
    label = mode
    if args.precisions:
        unknown = set(args.precisions.split(",")) - set(settings["precisions"])
        if unknown:
            parser.error(f"unknown precisions {sorted(unknown)} for mode {mode}; choose from {settings['precisions']}")
        if args.precisions.split(",") != settings["precisions"]:
            label = "_".join([mode, *args.precisions.split(",")])
        settings["precisions"] = args.precisions.split(",")
    trainers = args.trainers.split(",")
    unknown = set(trainers) - set(TRAINERS)
    if unknown:
        parser.error(f"unknown trainers {sorted(unknown)}; choose from {list(TRAINERS)}")
    info = environment(mode)
    if args.report_partial:
        runs = json.loads((Path(args.output) / f"throughput_{label}.partial.json").read_text())
        info["note"] = "report written from a measurement cut short (see `rounds` per figure)"
        settings.update(repeats=max(r["round"] for r in runs) + 1, steps=runs[0]["steps"], warmup=runs[0]["warmup"])
        rows = summarise(runs, mode, info.get("gpu"))
        write_report(rows, runs, mode, info, settings, Path(args.output), label)
        return rows
    started, runs = time.time(), []
    for round_index in range(settings["repeats"]):
        for precision in settings["precisions"]:
            for prompt, response in settings["settings"]:
                # alternate the order each round so neither trainer always runs first
                order = trainers if round_index % 2 == 0 else list(reversed(trainers))
                for trainer in order:
                    job = {"trainer": trainer, "model": settings["model"], "precision": precision, "prompt": prompt,
                           "response": response, "pairs": settings["pairs"], "warmup": settings["warmup"],
                           "steps": settings["steps"], "round": round_index}
                    result = run_job(job)
                    print(f"round {round_index} {precision} {prompt}/{response} {trainer}: "
                          f"{result['median_step_seconds']:.3f} s/step, {result['peak_memory_gib']:.2f} GiB", flush=True)
                    runs.append(result)
                    write_progress(runs, label, Path(args.output))
    info["seconds"] = round(time.time() - started, 1)
    info["load_average_at_end"] = os.getloadavg()
    rows = summarise(runs, mode, info.get("gpu"))
    write_report(rows, runs, mode, info, settings, Path(args.output), label)
    (Path(args.output) / f"throughput_{label}.partial.json").unlink(missing_ok=True)
    return rows


if __name__ == "__main__":
    main()
