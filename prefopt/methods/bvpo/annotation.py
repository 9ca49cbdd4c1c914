"""BVPO's data: trace pairs and empty-trace pairs sampled from the same model (Zhu et al. 2025, arXiv:2510.05095).

BVPO (loss ``bvpo``) trains on two preference sets built from the same prompts:

* the **trace view**: ``chosen`` / ``rejected`` generated with reasoning on, each a reasoning trace
  followed by the answer (``"<think>2 + 3 = 5</think>The answer is 5."``), scored jointly;
* the **empty-trace view**: ``chosen_no_trace`` / ``rejected_no_trace`` generated with reasoning off
  (the thinking block present but empty) and scored that way.

`annotate_views` builds such rows: it samples from the same model with reasoning on and off
(`prefopt.chat.ThinkingTokenizer` switches it: the template's switch, or the empty block appended to the
generation prompt) and labels each set with a reward through `prefopt.online.annotate`. The trainer scores the
empty-trace view with `prefopt.training.fields.EmptyTraceField` (the default provider of ``empty_policy`` /
``empty_reference``); the thinking format is `prefopt.chat.Thinking`.
"""

from __future__ import annotations

import logging

from prefopt.chat import Thinking, ThinkingTokenizer, prompt_key
from prefopt.online.annotation import ANNOTATION_SAMPLES, Annotation, annotate
from prefopt.online.sampling import SamplingConfig

logger = logging.getLogger(__name__)


def annotate_views(prompts, policy, tokenizer, reward, *, thinking: Thinking | None = None,
                   pairing: str = "best_vs_random", sampling: SamplingConfig | None = None,
                   max_new_tokens_without_trace: int | None = None, progress: bool = True, **sampling_options):
    """BVPO rows built as the paper builds them: ``n`` samples per prompt with reasoning on (trace pairs) and
    ``n`` with reasoning off (empty-trace pairs) from the same ``policy``, each set labelled with ``reward`` by
    `prefopt.online.annotate` (pairwise ``pairing``), joined by prompt.

    Sampling settings are `prefopt.online.annotate`'s (a `SamplingConfig` and/or keyword options such as
    ``n=4, max_new_tokens=256, seed=0``); reasoning traces are long, so a larger ``max_new_tokens`` than the
    default is usual, and ``max_new_tokens_without_trace`` can set a shorter one for the empty-trace view.

    Returns a `prefopt.online.Annotation` whose rows hold ``prompt``, ``chosen``/``rejected`` (+ scores) and
    ``chosen_no_trace``/``rejected_no_trace`` (+ ``score_chosen_no_trace``/``score_rejected_no_trace``), ready for
    ``PrefOptConfig(loss="bvpo")`` with ``EmptyTraceField(thinking)``. Its report has each view's annotation
    report and ``prompts_without_both`` (prompts left out because one view had only tied samples)."""
    if pairing == "ranked":
        raise ValueError("annotate_views builds pairs (BVPO is pairwise); use pairing 'best_vs_random' or 'best_vs_worst'")
    thinking = thinking or Thinking()
    if sampling is None:
        sampling_options.setdefault("n", ANNOTATION_SAMPLES)
    trace_sampling = SamplingConfig.of(sampling, **sampling_options)
    views = {}
    for name, reasoning, view_sampling in (("trace", True, trace_sampling),
                                           ("empty", False, trace_sampling.replace(max_new_tokens=max_new_tokens_without_trace))):
        views[name] = annotate(prompts, policy, ThinkingTokenizer(tokenizer, thinking, reasoning=reasoning), reward,
                               pairing=pairing, sampling=view_sampling, progress=progress)
    empty_rows = {prompt_key(row["prompt"]): row for row in views["empty"].rows}
    rows = []
    for row in views["trace"].rows:
        empty = empty_rows.get(prompt_key(row["prompt"]))
        if empty is None:
            continue
        rows.append({**row, "chosen_no_trace": empty["chosen"], "rejected_no_trace": empty["rejected"],
                     "score_chosen_no_trace": empty["score_chosen"], "score_rejected_no_trace": empty["score_rejected"]})
    report = {"prompts": len(prompts), "rows": len(rows), "prompts_without_both": len(prompts) - len(rows),
              "trace": views["trace"].report, "empty_trace": views["empty"].report}
    if report["prompts_without_both"]:
        logger.warning("annotate_views: %d of %d prompts left out (one view had no untied pair)",
                       report["prompts_without_both"], len(prompts))
    return Annotation(rows, report)
