"""What every benchmark script shares: its command line, 95% intervals over seeds, and the record of where it ran.

Kept to reporting only: each script's task, training loop and metrics stay in the script, with its
settings at the top.
"""

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import scipy
import scipy.stats
import torch

import prefopt

RESULTS = Path(__file__).parent / "results"


def parse_arguments(description, argv=None):
    """``--smoke`` (tiny settings, seconds; writes to a fresh temporary folder unless ``--output`` is given)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings that finish in seconds (checks the script, not the claim)")
    parser.add_argument("--output", type=Path, default=None, help=f"folder for the JSON, markdown and PNG (default {RESULTS})")
    arguments = parser.parse_args(argv)
    if arguments.output is None:
        # a smoke run must never overwrite the committed results
        arguments.output = Path(tempfile.mkdtemp(prefix="prefopt-benchmark-smoke-")) if arguments.smoke else RESULTS
    arguments.output.mkdir(parents=True, exist_ok=True)
    return arguments


def interval(values, confidence=0.95):
    """Mean and Student-t interval of the mean over seeds: {"mean", "low", "high", "n"} (low/high None for n < 2)."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": len(values)}
    standard_error = statistics.stdev(values) / math.sqrt(len(values))
    if standard_error == 0.0:  # every seed agrees; scipy would return nan for a zero scale
        return {"mean": mean, "low": mean, "high": mean, "n": len(values)}
    low, high = scipy.stats.t.interval(confidence, len(values) - 1, loc=mean, scale=standard_error)
    return {"mean": mean, "low": float(low), "high": float(high), "n": len(values)}


def format_interval(cell, digits=3):
    """'0.741 [0.680, 0.802]', or the mean alone when the interval is undefined."""
    if cell["low"] is None:
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"


def compare(first, second):
    """Verdict on two intervals: which is higher, or that they overlap."""
    if first["low"] is None or second["low"] is None:
        return "no interval"
    if first["low"] > second["high"]:
        return "higher"
    if first["high"] < second["low"]:
        return "lower"
    return "overlap"


def versus(first, second, name):
    """compare() as a phrase: 'higher than NAME', 'lower than NAME', 'overlaps NAME' or 'no interval'."""
    return {"higher": f"higher than {name}", "lower": f"lower than {name}", "overlap": f"overlaps {name}"}.get(
        compare(first, second), "no interval")


ZERO = {"low": 0.0, "high": 0.0}  # compare a difference's interval with zero


def environment(started):
    """Library versions, hardware and run time, recorded in every result file."""
    import matplotlib

    return {
        "prefopt": prefopt.__version__, "torch": torch.__version__, "scipy": scipy.__version__,
        "matplotlib": matplotlib.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor() or "unknown", "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        # wall time on a machine shared with other jobs, and this process's own CPU time (imports included)
        "seconds": round(time.time() - started, 1), "cpu_seconds": round(time.process_time(), 1),
    }


def settings(module_globals):
    """The script's upper-case settings, as JSON-ready values."""
    def plain(value):
        if isinstance(value, (range, tuple)):
            return list(value)
        return value
    return {name: plain(value) for name, value in module_globals.items()
            if name.isupper() and not isinstance(value, Path)}


def write(output, name, record, lines):
    """Write ``name``.json (the record) and ``name``.md (the lines); print the table."""
    (output / f"{name}.json").write_text(json.dumps(record, indent=2, allow_nan=False))
    (output / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {output / name}.{{json,md,png}}")


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
