"""Iterative and online training: the round loop around `prefopt.Trainer.train()` (INPO, online VPO, iterative DPO).

    from prefopt.online import OnlineConfig, train_online
    result = train_online(model, tokenizer, prompts, loss="inpo", reward=my_reward, args=PrefOptConfig(...),
                          rounds=3, samples_per_prompt=8, config=OnlineConfig(ranking="knockout"))
    result.model, result.history        # the trained policy, one metrics dict per round

Each round t (pi_1 = the model given, which is also the reference pi_ref):

1. **sample** K responses per prompt from pi_t (`prefopt.online.generate`, temperature 1.0 by default);
2. **rank** them with the preference oracle (a ``reward`` becomes a Bradley-Terry oracle): ``knockout``
   (a single-elimination tournament picks the best; a tournament whose loser advances, sharing the first
   round, picks the worst) or ``best_worst`` (argmax / argmin of the reward, or of the
   mean win probability against the other samples when the oracle has no reward). A prompt whose best
   and worst are tied under the oracle gives no pair (counted in the round's metrics, never trained);
3. **fields**: one pair (best, worst) per prompt; reference log-probs (and, for a loss that requires
   ``previous`` such as ``inpo``, log pi_t) of every response are precomputed once before training
   (`RoundStartLogps`); a loss with an ``online`` mode (``vpo``) trains in it, and each round draws one
   calibration sample y_cal ~ pi_cal per prompt (pi_cal = pi_ref by default) scored under the policy
   at every step and under the reference once (`CalibrationPolicyField`);
4. **train** pi_{t+1} from pi_t with `prefopt.Trainer` (a fresh optimizer, ``args`` for every round);
5. **evaluate and snapshot**: win rates of pi_{t+1} against pi_t and against pi_ref under the oracle
   (mean preference probability over sampled response pairs, with a normal 95% interval), mean reward,
   a Monte-Carlo estimate of KL(pi_{t+1} || pi_ref); logged through the round trainer's callbacks
   (``report_to``), then the policy is saved to ``round-<t>/policy`` and ``online_state.json`` records
   the round as done.

The run folder is ``args.output_dir``. Resuming: running the same call again with the same folder skips the
rounds already done
(loading the last snapshot) and, inside an interrupted round, reuses the round's saved pairs and resumes
its training from the latest HF checkpoint under ``round-<t>/`` (set ``save_steps`` in ``args``).
Generation is seeded per round and the round's data is saved, so a resumed run equals the
uninterrupted one.

The loop reads capabilities from the loss spec (``requires``, ``choices``), never the loss's name.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from prefopt.training.fields import FieldProvider, SampleField, as_matrix
from prefopt.chat import as_conversation, as_response
from prefopt.logprobs import score, sequence_logps

logger = logging.getLogger(__name__)

STATE_FILE = "online_state.json"
RANKINGS = ("knockout", "best_worst")
CALIBRATION_POLICIES = ("reference", "current")
# The column holding one calibration sample y_cal ~ pi_cal per prompt (online VPO).
CALIBRATION_COLUMN = "calibration"


@dataclass
class OnlineConfig:
    """Settings of the round loop (the training settings of each round are the `PrefOptConfig` ``args``)."""

    rounds: int = field(default=3, metadata={"help": "Number of rounds (INPO paper: 3)."})
    samples_per_prompt: int = field(default=8, metadata={"help": "K responses sampled per prompt and round (INPO paper: 8)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest sampled response, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (INPO paper: 1.0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    ranking: str = field(
        default="knockout",
        metadata={"help": "How the oracle picks each prompt's best and worst sample.", "choices": list(RANKINGS)},
    )
    calibration_policy: str = field(
        default="reference",
        metadata={"help": "pi_cal of online VPO's calibration samples: the reference or the round's current policy.",
                  "choices": list(CALIBRATION_POLICIES)},
    )
    eval_samples_per_prompt: int = field(
        default=2, metadata={"help": "Samples per prompt from pi_{t+1} for the round's win rates, reward and KL."}
    )
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})

    def __post_init__(self):
        for name in ("rounds", "samples_per_prompt", "max_new_tokens", "eval_samples_per_prompt", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"OnlineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"OnlineConfig.samples_per_prompt must be >= 2 to rank samples, got {self.samples_per_prompt}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"OnlineConfig.ranking must be one of {list(RANKINGS)}, got {self.ranking!r}")
        if self.calibration_policy not in CALIBRATION_POLICIES:
            raise ValueError(
                f"OnlineConfig.calibration_policy must be one of {list(CALIBRATION_POLICIES)}, got {self.calibration_policy!r}"
            )
        if not self.temperature > 0:
            raise ValueError(f"OnlineConfig.temperature must be > 0, got {self.temperature}")


@dataclass
class OnlineResult:
    """The trained policy, one metrics dict per round (round 1 first), and the run folder."""

    model: Any
    history: list[dict[str, float]]
    output_dir: str


# ---------------------------------------------------------------------------------------------- ranking


def _preferences(oracle, prompts: Sequence, first: Sequence, second: Sequence) -> list[float]:
    """P(first_i > second_i | prompt_i) for every i, in one oracle call."""
    if not prompts:
        return []
    probabilities = torch.as_tensor(oracle(list(prompts), list(first), list(second)), dtype=torch.float64).flatten()
    if probabilities.numel() != len(prompts):
        raise ValueError(f"the oracle returned {probabilities.numel()} probabilities for {len(prompts)} comparisons")
    if not torch.isfinite(probabilities).all() or ((probabilities < 0) | (probabilities > 1)).any():
        raise ValueError(f"the oracle must return probabilities in [0, 1], got {probabilities.tolist()}")
    return probabilities.tolist()


def _play(oracle, prompts: Sequence, samples: Sequence[Sequence], brackets: list[list[int]], keep_winner: bool) -> list[list[int]]:
    """One round of every prompt's bracket: adjacent entrants meet, the winner (or the loser) advances, an odd
    last entrant gets a bye. A probability of exactly 0.5 advances the first entrant. All prompts' matches go
    to the oracle in one call."""
    matches = [(p, bracket[i], bracket[i + 1]) for p, bracket in enumerate(brackets) for i in range(0, len(bracket) - 1, 2)]
    probabilities = _preferences(
        oracle, [prompts[p] for p, _, _ in matches], [samples[p][a] for p, a, _ in matches], [samples[p][b] for p, _, b in matches]
    )
    advanced: list[list[int]] = [[] for _ in brackets]
    for (p, a, b), probability in zip(matches, probabilities):
        first_wins = probability >= 0.5
        advanced[p].append(a if first_wins == keep_winner else b)
    for p, bracket in enumerate(brackets):
        if len(bracket) % 2:
            advanced[p].append(bracket[-1])
    return advanced


def knockout_best_worst(oracle, prompts: Sequence, samples: Sequence[Sequence]) -> list[tuple[int, int]]:
    """(best, worst) sample index per prompt by knockout tournaments under ``oracle(prompts, first, second)``.

    The best is the champion of a single-elimination tournament (entrants in sample order, adjacent pairs
    meet). The worst is the last one left in a tournament in which the loser of each match advances; it shares
    the first round (its entrants are the first round's losers and the entrant with a bye). About 1.5 K oracle
    comparisons per prompt, batched over prompts: one oracle call per bracket level.
    """
    first_round = [list(range(len(responses))) for responses in samples]
    if any(len(bracket) < 2 for bracket in first_round):
        raise ValueError("knockout ranking needs at least 2 samples per prompt")
    winners = _play(oracle, prompts, samples, first_round, keep_winner=True)
    # the loser bracket shares the first round: its losers, plus the entrant with a bye (who has lost nothing yet)
    losers = [
        [i for i in bracket if i not in set(won)] + ([bracket[-1]] if len(bracket) % 2 else [])
        for bracket, won in zip(first_round, winners)
    ]
    while any(len(bracket) > 1 for bracket in winners):
        winners = _play(oracle, prompts, samples, winners, keep_winner=True)
    while any(len(bracket) > 1 for bracket in losers):
        losers = _play(oracle, prompts, samples, losers, keep_winner=False)
    return [(won[0], lost[0]) for won, lost in zip(winners, losers)]


def scored_best_worst(oracle, prompts: Sequence, samples: Sequence[Sequence], reward=None) -> list[tuple[int, int]]:
    """(best, worst) per prompt: argmax / argmin of ``reward(prompts, responses)`` when given, else of each
    sample's mean win probability against the other samples of its prompt (a round robin under ``oracle``).
    The first index wins a tie."""
    flat_prompts = [prompt for prompt, responses in zip(prompts, samples) for _ in responses]
    flat_samples = [response for responses in samples for response in responses]
    if reward is not None:
        values = torch.as_tensor(reward(flat_prompts, flat_samples), dtype=torch.float64).flatten().tolist()
        scores, start = [], 0
        for responses in samples:
            scores.append(values[start : start + len(responses)])
            start += len(responses)
    else:
        matches = [(p, a, b) for p, responses in enumerate(samples) for a in range(len(responses)) for b in range(len(responses)) if a != b]
        probabilities = _preferences(
            oracle, [prompts[p] for p, _, _ in matches], [samples[p][a] for p, a, _ in matches], [samples[p][b] for p, _, b in matches]
        )
        scores = [[0.0] * len(responses) for responses in samples]
        for (p, a, _), probability in zip(matches, probabilities):
            scores[p][a] += probability / (len(samples[p]) - 1)
    pairs = []
    for values in scores:
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        worst = min(range(len(values)), key=lambda i: (values[i], i))
        pairs.append((best, worst))
    return pairs


def rank_samples(oracle, prompts: Sequence, samples: Sequence[Sequence], method: str = "knockout", reward=None):
    """``(pairs, ties)``: one (prompt index, best, worst) per prompt whose best beats its worst strictly under
    the oracle (P > 0.5), and the indices of the prompts skipped because the two tie (identical texts, or P <= 0.5)."""
    if method == "knockout":
        chosen = knockout_best_worst(oracle, prompts, samples)
    elif method == "best_worst":
        chosen = scored_best_worst(oracle, prompts, samples, reward)
    else:
        raise ValueError(f"ranking must be one of {list(RANKINGS)}, got {method!r}")
    candidates = [(p, best, worst) for p, (best, worst) in enumerate(chosen) if samples[p][best] != samples[p][worst]]
    probabilities = _preferences(
        oracle, [prompts[p] for p, _, _ in candidates], [samples[p][b] for p, b, _ in candidates], [samples[p][w] for p, _, w in candidates]
    )
    pairs = [candidate for candidate, probability in zip(candidates, probabilities) if probability > 0.5]
    kept = {p for p, _, _ in pairs}
    return pairs, [p for p in range(len(samples)) if p not in kept]


# --------------------------------------------------------------------------------------- field providers


@contextlib.contextmanager
def reference_scope(model, reference_model=None):
    """The module whose forward is pi_ref: ``reference_model`` when given, else ``model`` with its PEFT adapter
    disabled (the base the adapter was trained from)."""
    if reference_model is not None:
        yield reference_model
        return
    from accelerate.utils import is_peft_model

    if not is_peft_model(model):
        raise ValueError("the reference is the adapter-disabled base of a PEFT policy or an explicit reference model; got neither")
    with model.disable_adapter():
        yield model


@contextlib.contextmanager
def _evaluation_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class RoundStartLogps(FieldProvider):
    """Fields precomputed once, when the round's trainer is built, for every row of its training data.

    ``scorers`` maps a `LogProbs` field to ``fn(batch) -> Tensor``: [N] (one value per response row of the
    collated batch; stored [B, K]) or, for per-example fields (``per_example``), [B]. The round loop uses it
    for ``reference`` (pi_ref), ``previous`` (the policy as it is before the round's first step, i.e. pi_t) and
    ``calibration_reference``, as INPO's authors precompute reference and pi_t log-probs. The values are
    added to the trainer's training data as ``round_<field>`` columns and collated like any column."""

    def __init__(self, scorers: dict[str, Callable[[dict], torch.Tensor]], per_example: Sequence[str] = (), batch_size: int = 8):
        self.fields, self.scorers = tuple(scorers), scorers
        self.per_example, self.batch_size = set(per_example), batch_size
        self.source = "precomputed at the round's start: " + ", ".join(self.fields)

    def columns(self):
        return tuple(f"round_{name}" for name in self.fields)

    def bind(self, trainer):
        dataset = trainer.train_dataset
        if not isinstance(dataset, Dataset):
            raise ValueError("RoundStartLogps needs a map-style training Dataset")
        loader = DataLoader(dataset, batch_size=self.batch_size, collate_fn=trainer.data_collator, shuffle=False)
        device = trainer.accelerator.device
        values: dict[str, list[list[float]]] = {name: [] for name in self.fields}
        with _evaluation_mode(trainer.model), trainer.accelerator.autocast():
            for batch in loader:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                real = batch["response_index"] >= 0
                for name, scorer in self.scorers.items():
                    result = scorer(batch).float()
                    if name in self.per_example:
                        values[name] += [[value] for value in result.cpu().tolist()]
                    else:
                        matrix = as_matrix(result, batch["response_index"]).cpu()
                        values[name] += [row[mask].tolist() for row, mask in zip(matrix, real.cpu())]
        for name in self.fields:
            column = f"round_{name}"
            if column in dataset.column_names:
                dataset = dataset.remove_columns(column)
            dataset = dataset.add_column(column, values[name])
        trainer.train_dataset = dataset

    def collate(self, examples, kwise, num_responses):
        output = {}
        for name in self.fields:
            column = f"round_{name}"
            if column not in examples[0]:
                continue  # while bind() computes the values
            if name in self.per_example:
                output[f"field_{name}"] = torch.tensor([example[column][0] for example in examples], dtype=torch.float32)
            else:
                matrix = torch.zeros(len(examples), num_responses)
                for b, example in enumerate(examples):
                    matrix[b, : len(example[column])] = torch.tensor(example[column], dtype=torch.float32)
                output[f"field_{name}"] = matrix
        return output

    def provide(self, trainer, inputs, response_index):
        missing = [name for name in self.fields if f"field_{name}" not in inputs]
        if missing:
            raise ValueError(f"the batch has no precomputed {missing}: a custom data_collator must pass columns {list(self.columns())} through")
        return {name: inputs[f"field_{name}"] for name in self.fields}


class CalibrationPolicyField(SampleField):
    """``calibration_policy``: log pi_theta(y_cal|x) of the row's calibration sample, under the policy with
    gradient at every step (its ``calibration_reference`` is precomputed by `RoundStartLogps`)."""

    def __init__(self, column: str = CALIBRATION_COLUMN):
        super().__init__("calibration_policy", "calibration_reference", column=column)
        self.fields = ("calibration_policy",)
        self.source = f"one sample per prompt in column {column!r}, scored under the policy at every step"

    def provide(self, trainer, inputs, response_index):
        return {"calibration_policy": sequence_logps(trainer.model, self.sample_batch(inputs), fused_lm_head=True).logps}

    def sample_batch(self, inputs) -> dict[str, torch.Tensor]:
        prefix = f"field_{self.column}/"
        return {key[len(prefix) :]: value for key, value in inputs.items() if key.startswith(prefix)}


def _round_trainer_class():
    """`prefopt.Trainer` that runs every provider the loop passes, in the order given, including providers of
    fields the loss accepts without requiring them (online VPO's calibration fields)."""
    from prefopt.training.trainer import Trainer

    class RoundTrainer(Trainer):
        def __init__(self, *arguments, field_providers=None, **keywords):
            self._round_providers = list(field_providers or ())
            super().__init__(*arguments, field_providers=field_providers, **keywords)

        def _batch_providers(self):
            needed = [*self._round_providers, *super()._batch_providers()]
            return list({id(provider): provider for provider in needed}.values())

    return RoundTrainer


# ----------------------------------------------------------------------------------------------- metrics


def mean_with_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval (1.96 standard errors; zero width for one value)."""
    values = torch.as_tensor(list(values), dtype=torch.float64)
    mean = values.mean().item()
    if values.numel() < 2:
        return mean, mean, mean
    half_width = 1.96 * values.std(unbiased=True).item() / math.sqrt(values.numel())
    return mean, mean - half_width, mean + half_width


def win_rate(oracle, prompts: Sequence, new: Sequence[Sequence], old: Sequence[Sequence]) -> tuple[float, float, float]:
    """Mean P(new > old) under the oracle over paired samples (sample j of ``new`` vs sample j of ``old`` for each
    prompt), with its 95% interval."""
    count = min(min(len(a), len(b)) for a, b in zip(new, old))
    flat = [(prompt, a[j], b[j]) for prompt, a, b in zip(prompts, new, old) for j in range(count)]
    probabilities = _preferences(oracle, [x for x, _, _ in flat], [a for _, a, _ in flat], [b for _, _, b in flat])
    return mean_with_interval(probabilities)


# ----------------------------------------------------------------------------------------------- the loop


def _atomic_json(path: Path, value: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


def _distributed_state():
    from accelerate import PartialState

    return PartialState()


def _shared_json(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()`` run once, by the main process, and saved to ``path`` (unless a previous, interrupted run saved
    it); every process then reads the same value. Under ``accelerate launch`` sampling, ranking and evaluation thus
    happen once and every process trains on the same rows."""
    state = _distributed_state()
    if not path.exists() and state.is_main_process:
        _atomic_json(path, compute())
    state.wait_for_everyone()
    return json.loads(path.read_text())


def _latest_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _save_policy(model, folder: Path) -> None:
    """Adapter weights (PEFT) or the full model, in save_pretrained's format."""
    model.save_pretrained(folder)


def _load_policy(model, folder: Path) -> None:
    """Load a `_save_policy` snapshot into ``model`` (tied weights, saved once, are restored through their twin)."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model):
        from peft import load_peft_weights, set_peft_model_state_dict

        set_peft_model_state_dict(model, load_peft_weights(str(folder)))
        return
    if not (folder / "model.safetensors").exists():
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(folder))
        return
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    current = model.state_dict()
    loaded = {current[key].data_ptr() for key in state if key in current}
    untied_missing = [key for key in result.missing_keys if current[key].data_ptr() not in loaded]
    if untied_missing or result.unexpected_keys:
        raise ValueError(
            f"snapshot {folder} does not match the model: missing {untied_missing}, unexpected {result.unexpected_keys}"
        )


def _round_args(args, folder: Path):
    """A copy of the round's training arguments writing under ``folder``; the loop precomputes reference log-probs
    itself (INPO's authors do), so TRL's own precomputation is turned off."""
    from prefopt.config import PrefOptConfig

    round_args = copy.deepcopy(args) if args is not None else PrefOptConfig(str(folder))
    round_args.output_dir = str(folder)
    round_args.precompute_ref_log_probs = False
    return round_args


def _online_loss_kwargs(spec, args) -> tuple[dict, bool]:
    """The loss's hyper-parameters for online training and whether it needs calibration samples: a loss offering
    ``mode="online"`` (vpo) trains in it unless ``args`` chose another mode."""
    kwargs = copy.deepcopy(dict(args.loss_kwargs or {})) if args is not None else {}
    if "online" in spec.choices.get("mode", ()):
        own = kwargs.get(spec.name) if isinstance(kwargs.get(spec.name), dict) else kwargs
        own.setdefault("mode", "online")
        return kwargs, own["mode"] == "online"
    return kwargs, False


def _as_oracle(reward, oracle):
    if oracle is not None:
        return oracle
    if reward is None:
        raise ValueError("train_online needs a `reward` (turned into a Bradley-Terry oracle) or a preference `oracle`")
    from prefopt.online.rewards import BradleyTerryOracle

    return BradleyTerryOracle(reward)


def train_online(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    loss: str = "inpo",
    reward=None,
    oracle=None,
    args=None,
    rounds: int | None = None,
    samples_per_prompt: int | None = None,
    config: OnlineConfig | None = None,
    peft_config=None,
    reference_model=None,
    eval_prompts: Sequence | None = None,
    callbacks: Sequence | None = None,
) -> OnlineResult:
    """Train ``model`` for ``rounds`` rounds of sample -> rank -> fields -> train -> snapshot (module docstring).

    Args:
        model: the initial policy pi_1, also the reference pi_ref (a plain, PEFT or 4-bit model object).
        tokenizer: its tokenizer (chat template used when it has one).
        prompts: the training prompts (text or user-message lists), each sampled every round.
        loss: a registered loss: ``inpo`` (needs pi_t log-probs), ``vpo`` (trained in online mode with
            calibration samples), or any pairwise/ranked offline loss (iterative mode: best vs worst of K).
        reward: ``reward(prompts, responses) -> Tensor[N]`` (`prefopt.online.rewards`); becomes
            ``BradleyTerryOracle(reward)`` when no ``oracle`` is given, and gives the ``reward/mean`` metric.
        oracle: ``oracle(prompts, first, second) -> Tensor[N]`` of P(first > second | prompt).
        args: `PrefOptConfig` for each round's training. Its ``output_dir`` is the run folder (round t trains
            and checkpoints in ``<output_dir>/round-<t>``; default ``outputs/online``), its ``seed`` seeds round
            t's sampling as ``seed + t``; its ``loss``, if set, must equal ``loss``.
        rounds, samples_per_prompt: override ``config``'s.
        config: `OnlineConfig` (sampling, ranking, calibration, evaluation).
        peft_config: a `peft.PeftConfig` to train an adapter (the reference is then the adapter-disabled base);
            a model that is already a PEFT model is trained as it is.
        reference_model: pi_ref for a plain (non-PEFT) policy; default: a frozen copy of ``model`` as given.
        eval_prompts: prompts of the per-round metrics (default: ``prompts``).
        callbacks: extra `transformers.TrainerCallback`s for every round's trainer (they also receive the
            round metrics through ``on_log``).
    """
    from accelerate.utils import is_peft_model

    from prefopt.losses import get_loss

    config = copy.deepcopy(config) if config is not None else OnlineConfig()
    if rounds is not None:
        config.rounds = rounds
    if samples_per_prompt is not None:
        config.samples_per_prompt = samples_per_prompt
    config.__post_init__()
    # every prompt as the policy sees it when sampling (text -> a user message under a chat template), so the
    # trainer, the scorers and the sampler all read the same context
    prompts = [as_conversation(tokenizer, prompt) for prompt in prompts]
    eval_prompts = prompts if eval_prompts is None else [as_conversation(tokenizer, prompt) for prompt in eval_prompts]
    if not prompts:
        raise ValueError("train_online needs at least one prompt")
    spec = get_loss(loss)
    if spec.responses == "single":
        raise ValueError(f"loss {loss!r} trains on single on-policy samples; the round loop trains on ranked pairs")
    if args is not None and args.loss is not None and args.loss != loss:
        raise ValueError(f"args.loss is {args.loss!r} but train_online(loss={loss!r}); set one of them")
    loss_kwargs, needs_calibration = _online_loss_kwargs(spec, args)
    oracle = _as_oracle(reward, oracle)
    output_dir = Path(args.output_dir if args is not None else "outputs/online")
    output_dir.mkdir(parents=True, exist_ok=True)

    if peft_config is not None:
        if is_peft_model(model):
            raise ValueError("the model is already a PEFT model; pass peft_config=None to train its adapter")
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    uses_peft = is_peft_model(model)
    if uses_peft and reference_model is not None:
        raise ValueError("a PEFT policy's reference is its adapter-disabled base; reference_model is for plain policies")
    if not uses_peft and reference_model is None:
        reference_model = copy.deepcopy(model)
    if reference_model is not None:
        reference_model.eval().requires_grad_(False)

    state_path = output_dir / STATE_FILE
    settings = {"loss": loss, "loss_kwargs": loss_kwargs, "config": {k: v for k, v in asdict(config).items() if k != "rounds"}}
    state = json.loads(state_path.read_text()) if state_path.exists() else {"rounds_done": 0, "history": [], "settings": settings}
    if state["settings"] != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{state_path} was written by a run with other settings {state['settings']}; use another output_dir "
            f"or the same settings ({settings}) to resume it"
        )
    if state["rounds_done"]:
        _load_policy(model, output_dir / f"round-{state['rounds_done']}" / "policy")
        logger.info("resuming after round %d of %d", state["rounds_done"], config.rounds)

    # pi_ref's evaluation samples are drawn once (round 1's pi_t is pi_ref) and kept for every round's win rate
    reference_samples_path = output_dir / "reference_samples.json"
    for round_number in range(state["rounds_done"] + 1, config.rounds + 1):
        folder = output_dir / f"round-{round_number}"
        folder.mkdir(exist_ok=True)
        round_seed = (args.seed if args is not None else 0) + round_number
        data = _shared_json(folder / "round_data.json", lambda: _round_data(
            model, tokenizer, prompts, eval_prompts, oracle, reward, config, round_seed, reference_model, needs_calibration,
        ))  # saved: a resumed round trains on the same pairs
        rows = Dataset.from_list(data["rows"]) if data["rows"] else Dataset.from_dict({})
        round_info, previous_samples = data["info"], data["previous_samples"]
        reference_samples = _shared_json(reference_samples_path, lambda: previous_samples)  # round 1's pi_t is pi_ref
        trainer, logged = None, []
        # with dataloader_drop_last, a round with fewer pairs than one global batch has no step to train
        one_batch = (args.per_device_train_batch_size * _distributed_state().num_processes) if args is not None else 1
        too_few = args is not None and args.dataloader_drop_last and 0 < len(rows) < one_batch
        if too_few:
            logger.warning(
                "round %d: %d pair(s), fewer than one batch of %d with dataloader_drop_last=True: no step to train, the "
                "policy is unchanged this round (lower the batch size, add prompts or turn dataloader_drop_last off)",
                round_number, len(rows), one_batch,
            )
        elif len(rows):
            round_args = _round_args(args, folder)
            round_args.loss, round_args.loss_kwargs = loss, loss_kwargs or None
            trainer = round_trainer(model, tokenizer, rows, round_args, reference_model=reference_model,
                                    calibration=needs_calibration, callbacks=callbacks)
            trainer.train(resume_from_checkpoint=_latest_checkpoint(folder))
            # the mean of the logged step losses (a resumed round restores its log history, so it equals the
            # uninterrupted one's); with fewer steps than logging_steps, the Trainer's own average of the round
            logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
            logged = logged or [entry["train_loss"] for entry in trainer.state.log_history[-1:] if "train_loss" in entry]
        else:
            logger.warning(
                "round %d: the best and worst samples of all %d prompts tie under the oracle; no pair to train on, the "
                "policy is unchanged this round (raise samples_per_prompt or temperature, or check the reward)",
                round_number, len(prompts),
            )
        metrics = _shared_json(folder / "metrics.json", lambda: {
            "round": round_number, **round_info, "train_loss": sum(logged) / len(logged) if logged else float("nan"),
            **_round_metrics(model, tokenizer, eval_prompts, oracle, reward, config, round_seed, reference_model,
                             previous_samples, reference_samples),
        })
        if trainer is not None:  # through the round's callbacks and report_to integrations
            trainer.log({f"online/{key}": value for key, value in metrics.items()})
        state["rounds_done"], state["history"] = round_number, [*state["history"], metrics]
        if _distributed_state().is_main_process:
            _save_policy(model, folder / "policy")
            _atomic_json(state_path, state)
        _distributed_state().wait_for_everyone()
        logger.info("round %d: %s", round_number, metrics)
    return OnlineResult(model=model, history=state["history"], output_dir=str(output_dir))


def round_trainer(model, tokenizer, rows: Dataset, args, *, reference_model=None, calibration: bool = False, callbacks=None):
    """The `prefopt.Trainer` of one round: trains ``model`` (pi_t) on ``rows`` with ``args``' loss, its reference
    log-probs (pi_ref: ``reference_model``, else the adapter-disabled PEFT base) and, when the loss requires
    ``previous``, log pi_t precomputed before the first step; with ``calibration``, the rows' ``calibration``
    samples feed ``calibration_policy`` (every step) and ``calibration_reference`` (precomputed)."""
    from accelerate.utils import is_peft_model

    from prefopt.losses import combine_losses

    required = combine_losses(args.loss_components()).required_fields
    scorers = {"reference": _reference_scorer(model, reference_model)}
    if "previous" in required:
        scorers["previous"] = lambda batch: sequence_logps(model, batch).logps
    providers: list[FieldProvider] = []
    if calibration:  # bound first: the precomputation below collates its samples
        calibration_field = CalibrationPolicyField()
        reference_scorer = _reference_scorer(model, reference_model)
        scorers["calibration_reference"] = lambda batch: reference_scorer(calibration_field.sample_batch(batch))
        providers.append(calibration_field)
    providers.append(RoundStartLogps(scorers, per_example=("calibration_reference",), batch_size=args.per_device_train_batch_size))
    uses_peft = is_peft_model(model)
    had_reference_adapter = uses_peft and "ref" in model.peft_config
    trainer = _round_trainer_class()(
        model, ref_model=reference_model, args=args, train_dataset=rows, processing_class=tokenizer,
        callbacks=list(callbacks or ()), field_providers=providers,
    )
    if uses_peft and not had_reference_adapter and "ref" in model.peft_config:
        # TRL makes a copy of an existing adapter the reference ("ref" = pi_t); the loop's reference is pi_ref, the base
        model.delete_adapter("ref")
    return trainer


def _reference_scorer(model, reference_model) -> Callable[[dict], torch.Tensor]:
    def scorer(batch):
        with reference_scope(model, reference_model) as reference:
            return sequence_logps(reference, batch).logps

    return scorer


def _sample(model, tokenizer, prompts, config: OnlineConfig, n: int, seed: int) -> list[list[str]]:
    from prefopt.online.sampling import generate

    with _evaluation_mode(model):
        return [list(responses) for responses in generate(
            model, tokenizer, prompts, n=n, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            top_p=config.top_p, seed=seed, batch_size=config.generation_batch_size,
        )]


def _round_data(model, tokenizer, prompts, eval_prompts, oracle, reward, config, seed: int, reference_model,
                needs_calibration: bool):
    """``{"rows", "info", "previous_samples"}``: the round's training rows, their counts, and the pi_t samples the
    round's win rate compares against (per evaluation prompt)."""
    samples = _sample(model, tokenizer, prompts, config, config.samples_per_prompt, seed)
    pairs, ties = rank_samples(oracle, prompts, samples, config.ranking, reward if config.ranking == "best_worst" else None)
    rows = [{"prompt": prompts[p], "chosen": samples[p][best], "rejected": samples[p][worst]} for p, best, worst in pairs]
    if needs_calibration:
        calibration_policy = model if config.calibration_policy == "current" else None
        if calibration_policy is None:
            with reference_scope(model, reference_model) as reference:
                calibration = _sample(reference, tokenizer, [prompts[p] for p, _, _ in pairs], config, 1, seed + 10_000)
        else:
            calibration = _sample(model, tokenizer, [prompts[p] for p, _, _ in pairs], config, 1, seed + 10_000)
        for row, responses in zip(rows, calibration):
            row[CALIBRATION_COLUMN] = as_response(row["prompt"], responses[0])
    for row in rows:
        row["chosen"], row["rejected"] = as_response(row["prompt"], row["chosen"]), as_response(row["prompt"], row["rejected"])
    if eval_prompts == prompts:
        previous_samples = [responses[: config.eval_samples_per_prompt] for responses in samples]
    else:
        previous_samples = _sample(model, tokenizer, eval_prompts, config, config.eval_samples_per_prompt, seed + 20_000)
    info = {"pairs": len(rows), "skipped_ties": len(ties)}
    if reward is not None:
        flat_prompts = [prompt for prompt, responses in zip(prompts, samples) for _ in responses]
        values = torch.as_tensor(reward(flat_prompts, [r for responses in samples for r in responses]), dtype=torch.float64)
        info["reward/samples"] = values.mean().item()
    return {"rows": rows, "info": info, "previous_samples": previous_samples}


def _round_metrics(model, tokenizer, eval_prompts, oracle, reward, config, seed, reference_model, previous_samples, reference_samples):
    """Win rates of pi_{t+1} against pi_t and pi_ref, mean reward and KL(pi_{t+1} || pi_ref) on fresh samples."""
    new_samples = _sample(model, tokenizer, eval_prompts, config, config.eval_samples_per_prompt, seed + 30_000)
    metrics = {}
    for name, old in (("previous", previous_samples), ("reference", reference_samples)):
        mean, low, high = win_rate(oracle, eval_prompts, new_samples, old)
        metrics.update({f"win_rate/{name}": mean, f"win_rate/{name}_low": low, f"win_rate/{name}_high": high})
    flat_prompts = [prompt for prompt, responses in zip(eval_prompts, new_samples) for _ in responses]
    flat_responses = [as_response(prompt, r) for prompt, responses in zip(eval_prompts, new_samples) for r in responses]
    if reward is not None:
        values = torch.as_tensor(reward(flat_prompts, [r for responses in new_samples for r in responses]), dtype=torch.float64)
        metrics["reward/mean"] = values.mean().item()
    with _evaluation_mode(model):
        policy = score(model, tokenizer, flat_prompts, flat_responses).logps
        with reference_scope(model, reference_model) as reference:
            reference_logps = score(reference, tokenizer, flat_prompts, flat_responses).logps
    # E_{y ~ pi}[log pi(y) - log pi_ref(y)]: an unbiased Monte-Carlo estimate of the sequence-level KL
    metrics["kl/reference"] = (policy - reference_logps).double().mean().item()
    return metrics
