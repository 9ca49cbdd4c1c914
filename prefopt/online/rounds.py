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

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset

from prefopt.chat import as_conversation, as_response
from prefopt.config import PrefOptConfig
from prefopt.logprobs import score
from prefopt.losses import combine_losses, get_loss
from prefopt.online.evaluation import compare_samples
from prefopt.online.ranking import RANKINGS, as_oracle, rank_samples
from prefopt.online.run_folder import RunFolder, distributed_state
from prefopt.online.sampling import SamplingConfig, generate
from prefopt.training.fields import CalibrationPolicyField, FieldProvider, RoundStartLogps, evaluation_mode
from prefopt.training.reference import Reference
from prefopt.training.trainer import Trainer

logger = logging.getLogger(__name__)

CALIBRATION_POLICIES = ("reference", "current")
# The column holding one calibration sample y_cal ~ pi_cal per prompt (online VPO).
CALIBRATION_COLUMN = "calibration"


@dataclass
class OnlineConfig:
    """Settings of the round loop (the training settings of each round are the `PrefOptConfig` ``args``)."""

    rounds: int = field(default=3, metadata={"help": "Number of rounds (INPO paper: 3)."})
    samples_per_prompt: int = field(default=8, metadata={"help": "K responses sampled per prompt and round (INPO paper: 8)."})
    # the sampling settings' defaults are SamplingConfig's (one set for every sampler)
    max_new_tokens: int = field(default=SamplingConfig.max_new_tokens, metadata={"help": "Longest sampled response, in tokens."})
    temperature: float = field(default=SamplingConfig.temperature, metadata={"help": "Sampling temperature (INPO paper: 1.0)."})
    top_p: float = field(default=SamplingConfig.top_p, metadata={"help": "Nucleus sampling threshold."})
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
    generation_batch_size: int = field(default=SamplingConfig.batch_size, metadata={"help": "Prompts per generation batch."})

    def __post_init__(self):
        for name in ("rounds", "samples_per_prompt", "eval_samples_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"OnlineConfig.{name} must be >= 1, got {getattr(self, name)}")
        self.sampling(1, 0)  # the sampling settings are checked where every sampler's are
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

    def sampling(self, n: int, seed: int) -> SamplingConfig:
        """The round's sampling settings for ``n`` samples per prompt drawn with ``seed``."""
        try:
            return SamplingConfig(n=n, max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                  seed=seed, batch_size=self.generation_batch_size)
        except ValueError as error:
            raise ValueError(f"OnlineConfig: {error}") from None


@dataclass
class OnlineResult:
    """The trained policy, one metrics dict per round (round 1 first), and the run folder."""

    model: Any
    history: list[dict[str, float]]
    output_dir: str


# --------------------------------------------------------------------------------------- field providers


def _round_args(args, folder: Path):
    """A copy of the round's training arguments writing under ``folder``; the loop precomputes reference log-probs
    itself (INPO's authors do), so TRL's own precomputation is turned off."""
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
    oracle = as_oracle(reward, oracle)
    run = RunFolder(args.output_dir if args is not None else "outputs/online")

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
    reference = _round_reference(model, reference_model)

    settings = {"loss": loss, "loss_kwargs": loss_kwargs, "config": {k: v for k, v in asdict(config).items() if k != "rounds"}}
    state = run.state(settings)
    if state["rounds_done"]:
        run.load_policy(model, state["rounds_done"])
        logger.info("resuming after round %d of %d", state["rounds_done"], config.rounds)

    for round_number in range(state["rounds_done"] + 1, config.rounds + 1):
        folder = run.round_folder(round_number)
        round_seed = (args.seed if args is not None else 0) + round_number
        data = run.shared(f"{folder.name}/round_data.json", lambda: _round_data(
            model, tokenizer, prompts, eval_prompts, oracle, reward, config, round_seed, reference, needs_calibration,
        ))  # saved: a resumed round trains on the same pairs
        rows = Dataset.from_list(data["rows"]) if data["rows"] else Dataset.from_dict({})
        round_info, previous_samples = data["info"], data["previous_samples"]
        # pi_ref's evaluation samples are drawn once (round 1's pi_t is pi_ref) and kept for every round's win rate
        reference_samples = run.shared("reference_samples.json", lambda: previous_samples)
        trainer, logged = None, []
        # with dataloader_drop_last, a round with fewer pairs than one global batch has no step to train
        one_batch = (args.per_device_train_batch_size * distributed_state().num_processes) if args is not None else 1
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
            trainer.train(resume_from_checkpoint=run.latest_checkpoint(round_number))
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
        metrics = run.shared(f"{folder.name}/metrics.json", lambda: {
            "round": round_number, **round_info, "train_loss": sum(logged) / len(logged) if logged else float("nan"),
            **_round_metrics(model, tokenizer, eval_prompts, oracle, reward, config, round_seed, reference,
                             previous_samples, reference_samples),
        })
        if trainer is not None:  # through the round's callbacks and report_to integrations
            trainer.log_values({f"online/{key}": value for key, value in metrics.items()})
        state["rounds_done"], state["history"] = round_number, [*state["history"], metrics]
        run.save_policy(model, round_number)
        run.save_state(state)
        distributed_state().wait_for_everyone()
        logger.info("round %d: %s", round_number, metrics)
    return OnlineResult(model=model, history=state["history"], output_dir=str(run.path))


def round_trainer(model, tokenizer, rows: Dataset, args, *, reference_model=None, calibration: bool = False, callbacks=None):
    """The `prefopt.Trainer` of one round: trains ``model`` (pi_t) on ``rows`` with ``args``' loss, its reference
    log-probs (pi_ref: ``reference_model``, else the adapter-disabled PEFT base) and, when the loss requires
    ``previous``, log pi_t precomputed before the first step; with ``calibration``, the rows' ``calibration``
    samples feed ``calibration_policy`` (every step) and ``calibration_reference`` (precomputed)."""
    required = combine_losses(args.loss_components()).required_fields
    # every field goes through the trainer's one scoring routine (FieldContext): pi_ref, pi_t as it is now, and
    # the calibration samples under pi_ref
    scorers = {"reference": lambda context, batch: context.reference_logps(batch)}
    if "previous" in required:
        scorers["previous"] = lambda context, batch: context.model_logps(context.policy, batch)
    providers: list[FieldProvider] = []
    if calibration:
        calibration_field = CalibrationPolicyField(CALIBRATION_COLUMN)
        scorers["calibration_reference"] = lambda context, batch: context.reference_logps(calibration_field.sample_batch(batch))
        providers.append(calibration_field)
    providers.append(RoundStartLogps(scorers, per_example=("calibration_reference",), batch_size=args.per_device_train_batch_size))
    # pi_ref is the loop's: a PEFT policy's base, not the copy of its current adapter TRL would make the reference
    return Trainer(model, ref_model=_round_reference(model, reference_model), args=args, train_dataset=rows,
                   processing_class=tokenizer, callbacks=list(callbacks or ()), field_providers=providers)


def _round_reference(model, reference_model) -> Reference:
    """pi_ref of the loop: ``reference_model``, else the adapter-disabled base of a PEFT policy."""
    if reference_model is not None:
        return Reference.separate(reference_model)
    if not is_peft_model(model):
        raise ValueError("the reference is the adapter-disabled base of a PEFT policy or an explicit reference model; got neither")
    return Reference.base_of(model)


def _sample(model, tokenizer, prompts, config: OnlineConfig, n: int, seed: int) -> list[list[str]]:
    with evaluation_mode(model):
        return [list(responses) for responses in generate(model, tokenizer, prompts, config.sampling(n, seed))]


def _round_data(model, tokenizer, prompts, eval_prompts, oracle, reward, config, seed: int, reference: Reference,
                needs_calibration: bool):
    """``{"rows", "info", "previous_samples"}``: the round's training rows, their counts, and the pi_t samples the
    round's win rate compares against (per evaluation prompt)."""
    samples = _sample(model, tokenizer, prompts, config, config.samples_per_prompt, seed)
    pairs, ties = rank_samples(oracle, prompts, samples, config.ranking, reward if config.ranking == "best_worst" else None)
    rows = [{"prompt": prompts[p], "chosen": samples[p][best], "rejected": samples[p][worst]} for p, best, worst in pairs]
    if needs_calibration:
        calibration_policy = model if config.calibration_policy == "current" else None
        if calibration_policy is None:
            with reference.active() as module:
                calibration = _sample(module, tokenizer, [prompts[p] for p, _, _ in pairs], config, 1, seed + 10_000)
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


def _round_metrics(model, tokenizer, eval_prompts, oracle, reward, config, seed, reference: Reference, previous_samples,
                   reference_samples):
    """Win rates of pi_{t+1} against pi_t and pi_ref, mean reward and KL(pi_{t+1} || pi_ref) on fresh samples."""
    new_samples = _sample(model, tokenizer, eval_prompts, config, config.eval_samples_per_prompt, seed + 30_000)
    metrics = {}
    for name, old in (("previous", previous_samples), ("reference", reference_samples)):
        result = compare_samples(oracle, eval_prompts, new_samples, old, oracle=True)
        metrics.update({f"win_rate/{name}": result.mean, f"win_rate/{name}_low": result.low, f"win_rate/{name}_high": result.high})
    flat_prompts = [prompt for prompt, responses in zip(eval_prompts, new_samples) for _ in responses]
    flat_responses = [as_response(prompt, r) for prompt, responses in zip(eval_prompts, new_samples) for r in responses]
    if reward is not None:
        values = torch.as_tensor(reward(flat_prompts, [r for responses in new_samples for r in responses]), dtype=torch.float64)
        metrics["reward/mean"] = values.mean().item()
    with evaluation_mode(model):
        policy = score(model, tokenizer, flat_prompts, flat_responses).logps
        with reference.active() as module:
            reference_logps = score(module, tokenizer, flat_prompts, flat_responses).logps
    # E_{y ~ pi}[log pi(y) - log pi_ref(y)]: an unbiased Monte-Carlo estimate of the sequence-level KL
    metrics["kl/reference"] = (policy - reference_logps).double().mean().item()
    return metrics
