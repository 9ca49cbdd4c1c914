"""Peak memory of `prefopt.data.load_preferences` on a preference file larger than a comfortable share of memory.

Target (issue 13, item 11): a map-style load peaks at about the size of the file at most, and a
streaming load (``streaming=True``) at a bounded amount that does not grow with the file. The
baseline is what load_preferences did before: read the whole file into Python objects (one dict
per row), measured on a smaller file because at full size it would not fit this machine.

Each measurement runs in a fresh subprocess and reports its peak resident memory (ru_maxrss)
minus the resident memory after the imports, so library import costs are not counted. The JSONL
files are generated under /tmp (never committed) and removed afterwards.

    python benchmarks/large_source_memory.py            # 2 GB file (a few minutes on 2 cores)
    python benchmarks/large_source_memory.py --smoke    # a few MB, for CI
Writes benchmarks/results/large_source_memory.{json,md,png}.
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --- settings ----------------------------------------------------------------------------------
FILE_MB = 2048  # the large file, in MiB
BASELINE_FILE_MB = 256  # the whole-file-into-Python-objects baseline, in MiB
SMOKE_FILE_MB = 4
SMOKE_BASELINE_FILE_MB = 2
PROMPT_CHARS, RESPONSE_CHARS = 600, 500  # ~1.7 KB per JSON line
OUTPUT = Path(__file__).parent / "results"
NAME = "large_source_memory"

WORDS = "the a of to and in is it you that he was for on are with as his they be at one have this from".split()


def write_jsonl(path: Path, megabytes: float, seed: int = 0) -> int:
    """A pairwise JSONL of about ``megabytes`` MiB; returns the number of rows."""
    rng = random.Random(seed)
    vocabulary = [f"{word}{rng.randrange(1000)}" for word in WORDS * 40]

    def text(chars):
        words, length = [], 0
        while length < chars:
            words.append(rng.choice(vocabulary))
            length += len(words[-1]) + 1
        return " ".join(words)

    # Rows are drawn from a pool and numbered, so generation is fast but every row differs.
    pool = [(text(PROMPT_CHARS), text(RESPONSE_CHARS), text(RESPONSE_CHARS)) for _ in range(500)]
    target, rows = megabytes * 2**20, 0
    with path.open("w", encoding="utf-8") as handle:
        while handle.tell() < target:
            prompt, chosen, rejected = pool[rows % len(pool)]
            handle.write(json.dumps({"prompt": f"{rows}: {prompt}", "chosen": chosen, "rejected": f"{rejected} {rows}", "id": rows}) + "\n")
            rows += 1
    return rows


# The measured code, run as `python -c` in a fresh process: prints {"baseline_mb", "peak_mb", "rows", "seconds"}.
MEASURE = r"""
import json, resource, sys, time
import datasets, pyarrow, torch  # torch: an IterableDataset imports it; a training process has it loaded anyway
from prefopt.data import load_preferences
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
mode, path = sys.argv[1], sys.argv[2]
baseline = rss_mb()
start = time.perf_counter()
if mode == "map-style":
    rows = len(load_preferences(path))
elif mode == "streaming":
    rows = sum(1 for _ in load_preferences(path, streaming=True))
else:  # the former path: every row as a Python dict, then a Dataset from the list
    with open(path, encoding="utf-8") as handle:
        loaded = [json.loads(line) for line in handle if line.strip()]
    rows = len(datasets.Dataset.from_list(loaded))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak, "rows": rows, "seconds": seconds}))
"""


def measure(mode: str, path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, mode, str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} on {path} failed:\n{result.stderr[-2000:]}")
    values = json.loads(result.stdout.strip().splitlines()[-1])
    file_mb = path.stat().st_size / 2**20
    values.update(mode=mode, file_mb=round(file_mb, 1), increase_mb=round(values["peak_mb"] - values["baseline_mb"], 1))
    values["increase_over_file"] = round(values["increase_mb"] / file_mb, 2)
    return values


def environment() -> dict:
    import datasets
    import pyarrow
    import torch

    import prefopt

    return {
        "prefopt": getattr(prefopt, "__version__", "dev"), "datasets": datasets.__version__, "pyarrow": pyarrow.__version__,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def write_outputs(results: list[dict], smoke: bool, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    report = {"smoke": smoke, "results": results, "environment": environment(),
              "settings": {"prompt_chars": PROMPT_CHARS, "response_chars": RESPONSE_CHARS}}
    (output / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "Peak memory of load_preferences (peak RSS minus RSS after imports; fresh process per row)",
        "",
        "| mode | file (MiB) | rows | peak increase (MiB) | increase / file size | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(f"| {row['mode']} | {row['file_mb']} | {row['rows']} | {row['increase_mb']} | "
                     f"{row['increase_over_file']} | {row['seconds']:.1f} |")
    env = report["environment"]
    lines += ["", f"datasets {env['datasets']}, pyarrow {env['pyarrow']}, torch {env['torch']}, Python {env['python']}, "
              f"{env['cpus']} CPUs ({env['machine']}), {env['memory_gb']} GB memory" + (" (smoke run)" if smoke else "")]
    (output / f"{NAME}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    labels = [f"{row['mode']}\n{row['file_mb']:.0f} MiB file" for row in results]
    axis.bar(labels, [row["increase_mb"] for row in results], color=["tab:gray", "tab:blue", "tab:green"][: len(results)])
    for position, row in enumerate(results):
        axis.plot([position - 0.4, position + 0.4], [row["file_mb"]] * 2, "k--", linewidth=1)
    axis.set_ylabel("peak memory increase (MiB)")
    axis.set_title("load_preferences peak memory (dashed: file size)")
    figure.tight_layout()
    figure.savefig(output / f"{NAME}.png", dpi=120)
    plt.close(figure)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few MB instead of GB (CI)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    options = parser.parse_args(argv)
    size, baseline_size = (SMOKE_FILE_MB, SMOKE_BASELINE_FILE_MB) if options.smoke else (FILE_MB, BASELINE_FILE_MB)
    results = []
    with tempfile.TemporaryDirectory(prefix="prefopt-large-source-", dir="/tmp") as directory:
        small, large = Path(directory) / "baseline.jsonl", Path(directory) / "large.jsonl"
        for path, megabytes in ((small, baseline_size), (large, size)):
            started = time.perf_counter()
            rows = write_jsonl(path, megabytes)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB, {rows} rows) in {time.perf_counter() - started:.0f} s", flush=True)
        for mode, path in (("python objects (before)", small), ("map-style", small), ("map-style", large), ("streaming", large)):
            results.append(measure(mode, path))
            print(json.dumps(results[-1]), flush=True)
    write_outputs(results, options.smoke, options.output)
    return results


if __name__ == "__main__":
    main()
