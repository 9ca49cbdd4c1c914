"""Every benchmark script runs end to end in --smoke mode and writes well-formed JSON, a table and a plot.

Numbers are not asserted (a smoke run checks the script, not the claim); the structure is.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py") if not path.stem.startswith("_"))


def load(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their shared _reporting helper
    spec = importlib.util.spec_from_file_location(script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reject_nan(constant):
    raise ValueError(f"result file holds {constant}")


def run_smoke(script, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    benchmark = load(script, monkeypatch)
    benchmark.main(["--smoke", "--output", str(tmp_path)])
    report = json.loads((tmp_path / f"{script}.json").read_text(), parse_constant=reject_nan)
    return benchmark, report


# Studies sharing benchmarks/_reporting.py's result layout (seeds, intervals); the others have their own test below.
STUDIES = ["compare_losses", "fdpg_divergences", "inpo_rounds", "kwise_efficiency", "noise_robustness", "rpo_overoptimisation"]
OWN_SMOKE_TESTS = ["gpu_check", "large_source_memory", "throughput"]


def test_every_script_is_covered():
    assert set(SCRIPTS) == set(STUDIES) | set(OWN_SMOKE_TESTS), "add a smoke test for the new script"


@pytest.mark.slow
@pytest.mark.parametrize("script", STUDIES)
def test_smoke_run_writes_results(script, tmp_path, monkeypatch):
    benchmark, report = run_smoke(script, tmp_path, monkeypatch)
    assert report["settings"]["SEEDS"] == benchmark.SMOKE["SEEDS"]  # --smoke applied its settings
    for library in ("prefopt", "torch", "scipy", "python", "machine"):
        assert report["environment"][library]
    assert report["summary"] and report["runs"]
    intervals = [value for row in report["summary"] for value in row.values() if isinstance(value, dict)]
    assert intervals and all(set(cell) == {"mean", "low", "high", "n"} for cell in intervals)
    assert all(cell["low"] <= cell["mean"] <= cell["high"] for cell in intervals if cell["low"] is not None)
    assert "[" in (tmp_path / f"{script}.md").read_text()  # the table carries intervals
    assert (tmp_path / f"{script}.png").read_bytes()[:4] == b"\x89PNG"


def test_smoke_default_output_is_not_the_committed_results(monkeypatch):
    reporting = load("_reporting", monkeypatch)
    arguments = reporting.parse_arguments("doc", ["--smoke"])
    assert arguments.output != reporting.RESULTS and arguments.output.is_dir()
    assert reporting.parse_arguments("doc", []).output == reporting.RESULTS


@pytest.mark.parametrize(
    "values, expected",
    [
        # mean 2, sd 1, n 3: half-width = t(0.975, 2) * 1/sqrt(3) = 4.3027 * 0.57735 = 2.4841
        ([1.0, 2.0, 3.0], {"mean": 2.0, "low": 2.0 - 2.4841, "high": 2.0 + 2.4841, "n": 3}),
        ([5.0, 5.0], {"mean": 5.0, "low": 5.0, "high": 5.0, "n": 2}),  # zero spread: a point, not nan
        ([4.0], {"mean": 4.0, "low": None, "high": None, "n": 1}),  # one seed: no interval
    ],
)
def test_interval_is_a_student_t_interval_of_the_mean(values, expected, monkeypatch):
    cell = load("_reporting", monkeypatch).interval(values)
    assert cell == pytest.approx(expected, abs=1e-4) if expected["low"] is not None else cell == expected


def test_compare_reads_overlap_as_no_verdict(monkeypatch):
    compare = load("_reporting", monkeypatch).compare
    assert compare({"low": 0.5, "high": 0.7}, {"low": 0.1, "high": 0.4}) == "higher"
    assert compare({"low": 0.1, "high": 0.4}, {"low": 0.5, "high": 0.7}) == "lower"
    assert compare({"low": 0.1, "high": 0.6}, {"low": 0.5, "high": 0.7}) == "overlap"
    assert compare({"low": None, "high": None}, {"low": 0.5, "high": 0.7}) == "no interval"


@pytest.mark.slow
def test_noise_robustness_estimates_epsilon_beside_the_true_one(tmp_path, monkeypatch):
    benchmark, report = run_smoke("noise_robustness", tmp_path, monkeypatch)
    assert {row["method"] for row in report["summary"]} == set(benchmark.METHODS)
    clean = {row["method"]: row["expected_true_reward"]["mean"] for row in report["summary"] if row["flip_rate"] == 0.0}
    assert len(set(round(value, 6) for value in clean.values())) == 1  # eps = 0 (known and estimated): the same loss
    estimates = report["estimates"]
    assert len(estimates) == len(benchmark.SMOKE["SEEDS"]) * len(benchmark.SMOKE["FLIP_RATES"])
    assert all(e["compared"] == benchmark.SMOKE["TRUSTED_PROMPTS"] and e["low"] <= e["estimate"] <= e["high"] for e in estimates)
    assert all(e["estimate"] == 0.0 for e in estimates if e["flip_rate"] == 0.0)
    estimated_rdpo = [r for r in report["runs"] if r["method"] == "rdpo (estimated eps)"]
    assert [r["epsilon"] for r in estimated_rdpo] == [min(e["estimate"], benchmark.MAX_EPSILON) for e in estimates]


@pytest.mark.slow
def test_kwise_efficiency_covers_every_method_and_size(tmp_path, monkeypatch):
    benchmark, report = run_smoke("kwise_efficiency", tmp_path, monkeypatch)
    cells = {(row["method"], row["prompts"]) for row in report["summary"]}
    assert cells == {(m, n) for m in benchmark.METHODS for n in benchmark.SMOKE["PROMPT_COUNTS"]}
    rows = {(r["method"], r["prompts"], r["seed"]): r["training_rows"] for r in report["runs"]}
    n = benchmark.SMOKE["PROMPT_COUNTS"][0]
    # one ranking of K = 4 per prompt: 6 pairs (all), 3 (best vs rest), 1 (best vs worst)
    assert [rows[(m, n, 0)] for m in benchmark.METHODS] == [n, 6 * n, 3 * n, n]
    paired = {row["method"]: row["parameter_error_minus_plackett_luce"]["mean"] for row in report["summary"]}
    assert paired["plackett_luce"] == 0.0


@pytest.mark.slow
def test_rpo_overoptimisation_records_a_curve_per_method(tmp_path, monkeypatch):
    benchmark, report = run_smoke("rpo_overoptimisation", tmp_path, monkeypatch)
    smoke = benchmark.SMOKE
    assert report["steps"] == list(range(0, smoke["STEPS"] + 1, smoke["EVALUATE_EVERY"]))
    assert set(report["curves"]) == set(benchmark.METHODS)
    for curves in report["curves"].values():
        assert all(len(points) == len(report["steps"]) for points in curves.values())
    start = {method: curves["expected_true_reward"][0]["mean"] for method, curves in report["curves"].items()}
    assert len(set(start.values())) == 1  # every method starts from the reference


@pytest.mark.slow
def test_fdpg_divergences_measures_each_divergence_and_the_target(tmp_path, monkeypatch):
    benchmark, report = run_smoke("fdpg_divergences", tmp_path, monkeypatch)
    smoke = benchmark.SMOKE
    assert [row["divergence"] for row in report["summary"]] == smoke["DIVERGENCES"]
    assert len(report["runs"]) == len(smoke["DIVERGENCES"]) * len(smoke["SEEDS"])
    assert report["target"]["prompts"] > 0 and report["target"]["satisfaction"] == 1.0  # rejection sampling found target samples
    for run in report["runs"]:
        assert 0.0 <= run["satisfaction"] <= 1.0 and 0.0 <= run["distinct_2"] <= 1.0 and run["entropy"] > 0
        assert run["forward_kl_to_target"] is not None  # measured on the target's samples
        assert [step for step, _ in run["training_satisfaction"]] == report["steps"]  # FDPGTrainer's own log, every step
    assert {verdict["claim"] for verdict in report["verdicts"]} >= {"no divergence dominates"}
    table = (tmp_path / "fdpg_divergences.md").read_text()
    assert "| target p (rejection sampling" in table and "| reference pi_ref |" in table


@pytest.mark.slow
def test_inpo_rounds_reports_every_method_and_round(tmp_path, monkeypatch):
    benchmark, report = run_smoke("inpo_rounds", tmp_path, monkeypatch)
    rounds = benchmark.SMOKE["ROUNDS"]
    assert {(row["method"], row["round"]) for row in report["summary"]} == {(m, r + 1) for m in benchmark.METHODS for r in range(rounds)}
    assert all(len(run["rounds"]) == rounds for run in report["runs"])  # train_online's history, one entry per round
    for run in report["runs"]:  # round 1's previous policy is pi_1 = pi_ref: both win rates compare with the same samples
        assert run["rounds"][0]["win_rate/previous"] == run["rounds"][0]["win_rate/reference"]
    assert [entry["round"] for entry in report["paired"]] == list(range(1, rounds + 1))
    assert sum("beats the previous round" in verdict["claim"] for verdict in report["verdicts"]) == len(benchmark.METHODS)


@pytest.mark.slow
def test_large_source_memory_smoke_runs_and_reports(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    benchmark = load("large_source_memory", monkeypatch)
    results = benchmark.main(["--smoke", "--output", str(tmp_path)])
    assert [row["mode"] for row in results] == ["python objects (before)", "map-style", "map-style", "streaming"]
    assert all(row["rows"] > 0 for row in results)
    report = json.loads((tmp_path / "large_source_memory.json").read_text())
    assert report["smoke"] is True and report["environment"]["pyarrow"]
    assert (tmp_path / "large_source_memory.md").read_text().startswith("Peak memory of load_preferences")
    assert (tmp_path / "large_source_memory.png").stat().st_size > 0
def test_compare_losses_takes_its_losses_from_the_registry(monkeypatch):
    """Which losses train, on which rows or in which online mode, comes from trainable_losses, the field
    providers and the loss specs; every registered loss is trained or listed with its reason."""
    from prefopt.data import get_task
    from prefopt.training.fields import servable_fields
    from prefopt.losses import get_loss, list_losses
    from prefopt.main_job import trainable_losses

    benchmark = load("compare_losses", monkeypatch)
    task = get_task("sentiment")
    runs, skipped = benchmark.plan(task)
    offline = {run.loss: run.mode for run in runs if run.mode in ("pairwise", "kwise")}
    online = {run.label: run for run in runs if run.mode not in ("pairwise", "kwise")}
    assert set(offline) == set(trainable_losses("sentiment"))
    assert {run.loss for run in runs} | {loss for loss, _ in skipped} == set(list_losses())
    assert not {run.loss for run in runs} & {loss for loss, _ in skipped}
    assert {n for n, mode in offline.items() if mode == "kwise"} == {n for n in offline if get_loss(n).responses == "ranked"}
    assert offline["plackett_luce"] == "kwise" and offline["dpo"] == "pairwise"
    # the online methods, each in its own driver's mode
    assert online["inpo"].mode == "online rounds" and online["fdpg"].mode == "on-policy"
    assert online["vpo (online)"] == benchmark.Run("vpo (online)", "vpo", "online rounds")
    servable = servable_fields(task.load("pairwise", split="train")[0])
    for run in online.values():  # a loss runs online because it offers an online mode or misses a field only its driver fills
        missing = set(get_loss(run.loss).required_fields) - servable
        assert "online" in get_loss(run.loss).choices.get("mode", ()) or {benchmark.FIELD_DRIVERS[f] for f in missing} == {run.mode}
    assert set(benchmark.trainers) >= {run.mode for run in runs}
    why = dict(skipped)
    assert "bvpo" in why and "empty_policy" in why["bvpo"] and "reasoning" in why["bvpo"]


def test_compare_losses_names_a_loss_no_driver_can_feed(monkeypatch):
    """A loss needing a field that neither a provider nor a driver fills is listed with the provider's own words."""
    from prefopt.data import get_task
    from prefopt.training.fields import FieldProvider

    benchmark = load("compare_losses", monkeypatch)
    monkeypatch.setattr(benchmark, "NOT_ON_THIS_TASK", {})
    _, skipped = benchmark.plan(get_task("sentiment"))
    assert "chosen_no_trace" in dict(skipped)["bvpo"]  # EmptyTraceField's refusal names the columns it lacks
    assert isinstance(benchmark.provider_refusal(FieldProvider(), {}, "x"), str)


def test_compare_losses_plans_a_newly_registered_loss_by_its_spec(monkeypatch):
    """A loss registered tomorrow is planned in the mode its spec asks for, with no edit to the script."""
    from prefopt.data import get_task
    from prefopt.losses import list_losses, register_loss, unregister_loss

    def zero(batch):
        """A scratch loss (zero); only its spec matters here."""
        return batch.policy[:, 0] * 0

    def with_mode(batch, *, mode="offline"):
        """A scratch loss with an online mode (zero)."""
        return batch.policy[:, 0] * 0

    scratch = {  # name -> (register_loss options, expected mode, or None: not trained)
        "test_needs_previous": ({"requires": ("previous",)}, "online rounds"),
        "test_needs_proposal": ({"responses": "single", "needs_reference": False, "requires": ("proposal", "target")}, "on-policy"),
        "test_single_needs_previous": ({"responses": "single", "requires": ("previous",)}, None),  # rounds train on pairs
        "test_needs_two_drivers": ({"requires": ("previous", "proposal")}, None),
        "test_needs_traces": ({"requires": ("empty_policy",)}, None),
    }
    benchmark = load("compare_losses", monkeypatch)
    try:
        for name, (options, _) in scratch.items():
            register_loss(name, paper="a test", **options)(zero)
        register_loss("test_has_online_mode", paper="a test", choices={"mode": ("offline", "online")})(with_mode)
        runs, skipped = benchmark.plan(get_task("sentiment"))
    finally:
        for name in [*scratch, "test_has_online_mode"]:
            if name in list_losses():
                unregister_loss(name)
    modes = {run.label: run.mode for run in runs}
    why = dict(skipped)
    for name, (_, mode) in scratch.items():
        assert modes.get(name) == mode and (mode is not None or name in why), name
    assert "previous, proposal" in why["test_needs_two_drivers"]
    assert modes["test_has_online_mode"] == "pairwise" and modes["test_has_online_mode (online)"] == "online rounds"


@pytest.mark.slow
def test_compare_losses_reports_every_planned_loss_and_the_rest(tmp_path, monkeypatch):
    benchmark, report = run_smoke("compare_losses", tmp_path, monkeypatch)
    assert {row["label"] for row in report["summary"]} == set(benchmark.SMOKE["LOSSES"])
    assert len(report["runs"]) == len(benchmark.SMOKE["LOSSES"]) * len(benchmark.SMOKE["SEEDS"])
    assert all(0.0 <= run["win_rate"] <= 1.0 and run["peak_memory_gib"] > 0 for run in report["runs"])
    assert {row["mode"] for row in report["summary"]} == {"pairwise", "kwise", "online rounds"}
    inpo = [run for run in report["runs"] if run["loss"] == "inpo"]
    assert all(len(run["rounds"]) == benchmark.SMOKE["ROUNDS"] for run in inpo)  # it trained through train_online
    assert {entry["loss"] for entry in report["not_trained"]} == {"bvpo"}
    assert report["drivers"]["online rounds"] == "prefopt.online.train_online"
    assert "| inpo | online rounds |" in (tmp_path / "compare_losses.md").read_text()


def readme_section(name="benchmarks"):
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert match, f"README has no {name} section"
    return match.group(1)


def test_readme_documents_every_script_and_links_committed_results():
    """Each script is run in the benchmarks or performance section, and its results (one file per mode, named
    after the script, e.g. throughput_cpu.json) are committed."""
    text = readme_section() + readme_section("performance")
    assert set(re.findall(r"python benchmarks/(\w+)\.py", text)) == set(SCRIPTS)
    committed = [path.name for path in (BENCHMARKS / "results").iterdir()]
    for script in SCRIPTS:
        for suffix in ("json", "md", "png"):
            assert any(re.fullmatch(rf"{script}(_\w+)?\.{suffix}", name) for name in committed), f"commit the {suffix} results of {script}"
    for link in re.findall(r"\]\((benchmarks/results/[^)]+)\)", text):
        assert (ROOT / link).is_file(), link


def test_readme_tables_are_copied_from_the_committed_results():
    """A README table row must appear verbatim in a results markdown file, so it cannot go stale."""
    results = "\n".join(path.read_text() for path in (BENCHMARKS / "results").glob("*.md"))
    rows = [line for line in readme_section().splitlines() if line.startswith("|") and not line.startswith("|---")]
    assert rows
    measured = measured_tables(readme_section("performance"))
    assert measured, "the performance section shows the throughput tables"
    rows += [row for table in measured for row in table]
    stale = [row for row in rows if row not in results]
    assert not stale, f"README rows not in benchmarks/results/*.md (re-run the script and copy its table): {stale}"


def measured_tables(text):
    """The tables of a README section that report measurements: those headed like throughput.py's tables
    (the performance section's other tables describe switches)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("| precision | prompt/response | trainer |"):
            current = []
            tables.append(current)
        elif current is not None and line.startswith("|"):
            if not line.startswith("|---"):
                current.append(line)
        else:
            current = None
    return tables


@pytest.mark.slow
def test_throughput_smoke_runs_both_trainers_and_reports(tmp_path, monkeypatch):
    """The CI smoke mode: TRL and prefopt (pairs, and K=4 rankings) side by side on a tiny model."""
    pytest.importorskip("matplotlib")
    benchmark = load("throughput", monkeypatch)
    rows = benchmark.main(["--smoke", "--output", str(tmp_path), "--trainers", "trl,prefopt,prefopt_k4"])
    by_trainer = {row["trainer"]: row for row in rows}
    assert set(by_trainer) == {"trl", "prefopt", "prefopt_k4"}
    assert by_trainer["trl"]["pairs_per_second_vs_trl"] == pytest.approx(1.0)
    assert by_trainer["prefopt"]["pairs_per_second_vs_trl"] > 0
    assert by_trainer["prefopt"]["packing_fallback"] is None  # the packed path really ran
    assert by_trainer["prefopt_k4"]["k4_over_pair"] > 0
    report = json.loads((tmp_path / "throughput_smoke.json").read_text())
    assert report["environment"]["trl"] and report["environment"]["torch"]
    assert all(run["peak_memory_gib"] > 0 for run in report["runs"])
    assert (tmp_path / "throughput_smoke.md").read_text().startswith("Training throughput")
    assert (tmp_path / "throughput_smoke.png").stat().st_size > 0
    assert not (tmp_path / "throughput_smoke.partial.json").exists()


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part_and_reports_numbers(tmp_path, monkeypatch, capsys):
    """The GPU check's CI mode: every part on the CPU with the tiny model (4-bit through bitsandbytes' CPU backend)."""
    pytest.importorskip("matplotlib")
    benchmark = load("gpu_check", monkeypatch)
    report = benchmark.main(["--smoke", "--output", str(tmp_path)])
    failed = {name: part["traceback"] for name, part in report["parts"].items() if not part["ok"]}
    assert not failed and report["ok"] and report["failed"] == [], failed
    saved = json.loads((tmp_path / "gpu_check.json").read_text(), parse_constant=reject_nan)
    assert list(saved["parts"]) == list(benchmark.PARTS) and saved["ok"] is True
    parts = saved["parts"]
    assert all(part["ok"] and part["seconds"] >= 0 and part["error"] is None for part in parts.values())

    rows = parts["throughput"]["result"]["summary"]
    assert {(r["comparison"], r["precision"], r["config"]) for r in rows} == {
        (comparison, precision, config) for comparison, (baseline, candidate, _) in benchmark.COMPARISONS.items()
        for precision in benchmark.SMOKE["precisions"] for config in (baseline, candidate)}
    assert all(r["pairs_per_second"] > 0 and r["peak_memory_gib"] > 0 for r in rows)
    candidates = [r for r in rows if r["role"] == "candidate"]
    assert all(r["vs_baseline"] > 0 and isinstance(r["target_met"], bool) for r in candidates)
    by_config = {(r["precision"], r["config"]): r for r in rows}
    for precision in benchmark.SMOKE["precisions"]:  # each configuration ran as configured
        assert by_config[(precision, "trl_default")]["gradient_checkpointing_active"]  # TRL's default
        assert not by_config[(precision, "trl")]["gradient_checkpointing_active"]
        assert by_config[(precision, "prefopt_best")]["reference_precomputed"]
        assert not by_config[(precision, "prefopt")]["reference_precomputed"]

    packing = parts["packing"]["result"]
    assert packing["packing_fallback"] is None
    for difference in [layout["packed_vs_plain"] for layout in packing["layouts"].values()] + [packing["plain_vs_plain_padded"]]:
        assert 0 <= difference["mean"] <= difference["max"] < 0.1 and difference["tokens"] > 0

    generated = parts["generate_4bit"]["result"]
    assert generated["linear4bit_layers"] > 0 and generated["samples_per_second"] > 0
    assert generated["prompts"] == benchmark.SMOKE["generate_prompts"] and generated["n"] == benchmark.SMOKE["generate_n"]

    metrics = parts["online_round"]["result"]["metrics"]
    assert set(metrics) == set(benchmark.ROUND_METRICS) and metrics["round"] == 1 and metrics["pairs"] > 0
    assert all(isinstance(value, (int, float)) for value in metrics.values())

    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("GPU check, smoke") and "| best_vs_default | qlora-4bit |" in table
    assert (tmp_path / "gpu_check.png").read_bytes()[:4] == b"\x89PNG"

    # the internal --job entry point of a throughput subprocess: one configuration, its result as the last line
    capsys.readouterr()
    job = {"model": "tiny", "device": "cpu", "prompt": 8, "response": 4, "pairs": 2, "warmup": 1, "steps": 1,
           "config": "prefopt", "precision": "lora-bf16", "round": 0}
    benchmark.main(["--job", json.dumps(job)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["config"] == "prefopt" and result["median_step_seconds"] > 0


def test_gpu_check_fails_loudly_and_still_runs_every_part(tmp_path, monkeypatch):
    """A part that raises is reported with its traceback, the other parts still run, and the report says so."""
    pytest.importorskip("matplotlib")
    benchmark = load("gpu_check", monkeypatch)
    ran = []

    def broken(settings, device):
        ran.append("packing")
        raise RuntimeError("planted failure")

    monkeypatch.setattr(benchmark, "check_packing", broken)
    monkeypatch.setattr(benchmark, "check_generate", lambda settings, device: ran.append("generate_4bit") or {})
    monkeypatch.setattr(benchmark, "environment", lambda device: {"device": device})
    report = benchmark.main(["--smoke", "--output", str(tmp_path), "--parts", "packing,generate_4bit"])
    assert ran == ["packing", "generate_4bit"] and report["failed"] == ["packing"] and not report["ok"]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "planted failure" in saved["parts"]["packing"]["traceback"] and saved["parts"]["generate_4bit"]["ok"]
    assert "FAILED: packing" in (tmp_path / "gpu_check.md").read_text()
