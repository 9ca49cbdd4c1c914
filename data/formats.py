"""The format registry: small named adapters from public preference-data shapes to prefopt's canonical schemas.

An adapter is ``fn(row: dict, **options) -> dict`` mapping ONE source row to one canonical row of
ONE schema ("pairwise" or "kwise"); it raises `InvalidRowError` (without the row index, which the
loader adds) when the row cannot be mapped. Source columns the adapter does not consume pass
through unchanged, so nothing is lost silently.

``ultrafeedback`` is a dispatcher: the raw dataset (a ``completions`` list with ratings) and the
binarized one (``chosen`` / ``rejected`` message lists) are different source schemas, so each has
its own adapter (``ultrafeedback_completions`` -> K-wise, ``ultrafeedback_binarized`` -> pairwise)
and ``ultrafeedback`` picks one from the dataset's columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from ._validation import (
    BAD_LABEL,
    BAD_TRANSCRIPT,
    IDENTICAL,
    LENGTH_MISMATCH,
    MISSING,
    NO_PROMPT,
    NOT_A_LIST,
    NOT_PERMUTATION,
    NOT_TEXT,
    TOO_FEW,
    InvalidRowError,
    check_score,
    check_text,
    is_conversational,
)

SCHEMAS = ("pairwise", "kwise")


@dataclass(frozen=True)
class FormatSpec:
    name: str
    schema: str | None  # None for a dispatcher, which resolves to a spec that has one
    adapter: Callable[..., dict] | None = field(repr=False)
    consumes: tuple[str, ...]
    description: str
    dispatch: Callable[[Collection[str]], str] | None = field(default=None, repr=False)

    def resolve(self, columns: Collection[str]) -> "FormatSpec":
        """The spec that maps a source with these columns (itself, unless this is a dispatcher)."""
        return self if self.dispatch is None else get_format(self.dispatch(columns))


_REGISTRY: dict[str, FormatSpec] = {}


def register_format(
    name: str, *, schema: str, consumes: tuple[str, ...], description: str
) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Decorator registering ``fn(row, **options) -> canonical row`` as format ``name``; duplicates raise."""
    if schema not in SCHEMAS:
        raise ValueError(f"schema must be one of {list(SCHEMAS)}, got {schema!r}")

    def decorator(adapter: Callable[..., dict]) -> Callable[..., dict]:
        _add(FormatSpec(name, schema, adapter, tuple(consumes), description))
        return adapter

    return decorator


def _add(spec: FormatSpec) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name):
        raise ValueError(f"format name {spec.name!r} must be lower-case snake_case")
    if spec.name in _REGISTRY:
        raise ValueError(f"format {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def unregister_format(name: str) -> None:
    """Remove a format (for tests and plugins that re-register); unknown names raise."""
    get_format(name)
    del _REGISTRY[name]


def get_format(name: str) -> FormatSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown preference format {name!r}; registered formats: {', '.join(list_formats())}")
    return _REGISTRY[name]


def list_formats() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- shared helpers


def _require(row: dict, name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise InvalidRowError(None, name, MISSING)
    return value


def _require_string(row: dict, name: str) -> str:
    value = _require(row, name)
    if not isinstance(value, str):
        raise InvalidRowError(None, name, NOT_TEXT, f"got {type(value).__name__}")
    return value


def _require_list(row: dict, name: str) -> list:
    value = _require(row, name)
    if not isinstance(value, list):
        raise InvalidRowError(None, name, NOT_A_LIST, f"got {type(value).__name__}")
    return value


def _require_responses(row: dict, name: str) -> list:
    """A list of at least 2 response texts, each checked; errors name the source position, before any reordering."""
    responses = _require_list(row, name)
    if len(responses) < 2:
        raise InvalidRowError(None, name, TOO_FEW, f"got {len(responses)}")
    for position, response in enumerate(responses):
        check_text(response, f"{name}[{position}]", completion=True)
    return responses


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) from two full texts or conversations that share their beginning.

    Conversations: the prompt is the longest common run of messages, shortened so that it does not
    end with an assistant message (both completions then start with the model's turn). Strings: the
    longest common character prefix, with a trailing space moved into the completions, as TRL's
    ``extract_prompt`` does.
    """
    if chosen == rejected:
        raise InvalidRowError(None, "chosen", IDENTICAL)
    if is_conversational(chosen) and is_conversational(rejected):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        while shared > 0 and chosen[shared - 1].get("role") == "assistant":
            shared -= 1
        if shared == 0:
            raise InvalidRowError(None, "prompt", NO_PROMPT, "chosen and rejected share no leading non-assistant message")
        return chosen[:shared], chosen[shared:], rejected[shared:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared > 0 and chosen[shared - 1] == " ":
            shared -= 1
        if not chosen[:shared].strip():
            raise InvalidRowError(None, "prompt", NO_PROMPT, "chosen and rejected share no leading text")
        return chosen[:shared], chosen[shared:], rejected[shared:]
    bad = "chosen" if not isinstance(chosen, (str, list)) else "rejected"
    raise InvalidRowError(None, bad, NOT_TEXT, "chosen and rejected must both be strings or both lists of messages")


def _optional_scores(row: dict, chosen_key: str, rejected_key: str) -> dict:
    out = {}
    if row.get(chosen_key) is not None or row.get(rejected_key) is not None:
        out["score_chosen"] = check_score(row.get(chosen_key), chosen_key)
        out["score_rejected"] = check_score(row.get(rejected_key), rejected_key)
    return out


# --------------------------------------------------------------------------- trl


@register_format(
    "trl",
    schema="pairwise",
    consumes=("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
    description="TRL preference rows: standard (strings) or conversational (message lists), explicit or implicit prompt",
)
def trl_adapter(row: dict) -> dict:
    chosen, rejected = _require(row, "chosen"), _require(row, "rejected")
    prompt = row.get("prompt")
    # As TRL's maybe_extract_prompt: a prompt of the other form (a string next to message lists,
    # as in UltraFeedback-binarized) is a label, and the real prompt is inside chosen / rejected.
    if prompt is None or (isinstance(prompt, str) != isinstance(chosen, str)):
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_optional_scores(row, "score_chosen", "score_rejected")}


# --------------------------------------------------------------------------- hh

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, field: str) -> list[dict]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [{'role': 'user', ...}, {'role': 'assistant', ...}]."""
    if text.startswith(("Human:", "Assistant:")):  # some copies drop the leading blank line
        text = "\n\n" + text
    pieces = _HH_TURN.split(text)
    if pieces[0].strip():
        raise InvalidRowError(None, field, BAD_TRANSCRIPT, "text before the first '\\n\\nHuman:' turn")
    if len(pieces) < 3:
        raise InvalidRowError(None, field, BAD_TRANSCRIPT, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    if pieces[-2] != "Assistant":
        # The preference is about the last Assistant reply; a transcript that ends on the Human has none.
        raise InvalidRowError(None, field, BAD_TRANSCRIPT, "it ends on a Human turn, so there is no final Assistant reply to prefer")
    return [{"role": _HH_ROLES[pieces[i]], "content": pieces[i + 1].strip()} for i in range(1, len(pieces), 2)]


@register_format(
    "hh",
    schema="pairwise",
    consumes=("chosen", "rejected"),
    description="Anthropic HH transcripts ('\\n\\nHuman:' / '\\n\\nAssistant:' turns); the shared turns become a conversational prompt",
)
def hh_adapter(row: dict) -> dict:
    chosen = parse_hh_transcript(_require_string(row, "chosen"), "chosen")
    rejected = parse_hh_transcript(_require_string(row, "rejected"), "rejected")
    prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# --------------------------------------------------------------------------- ultrafeedback

_UF_TEXT_KEYS = ("response", "text", "content")
_UF_RATING_KEYS = ("overall_score", "fine-grained_score", "rating", "score")


@register_format(
    "ultrafeedback_completions",
    schema="kwise",
    consumes=("instruction", "prompt", "completions"),
    description="raw UltraFeedback: 'instruction' + 'completions' [{'response', <rating>}], sorted best first",
)
def ultrafeedback_completions_adapter(row: dict, rating: str | None = None) -> dict:
    """``rating``: the key holding each completion's score; by default the first of
    overall_score, fine-grained_score, rating, score present in the first completion."""
    prompt_key = "instruction" if row.get("instruction") is not None else "prompt"
    prompt = _require_string(row, prompt_key)
    items = _require_list(row, "completions")
    if len(items) < 2:
        raise InvalidRowError(None, "completions", TOO_FEW, f"got {len(items)}")
    if not all(isinstance(item, dict) for item in items):
        raise InvalidRowError(None, "completions", NOT_TEXT, "each completion must be an object with a response and a rating")
    text_key = next((k for k in _UF_TEXT_KEYS if k in items[0]), _UF_TEXT_KEYS[0])
    rating_key = rating or next((k for k in _UF_RATING_KEYS if k in items[0]), _UF_RATING_KEYS[0])
    texts, scores = [], []
    for position, item in enumerate(items):
        if item.get(text_key) is None:
            raise InvalidRowError(None, f"completions[{position}].{text_key}", MISSING)
        if item.get(rating_key) is None:
            raise InvalidRowError(None, f"completions[{position}].{rating_key}", MISSING)
        check_text(item[text_key], f"completions[{position}].{text_key}", completion=True)  # source index, before sorting
        texts.append(item[text_key])
        scores.append(check_score(item[rating_key], f"completions[{position}].{rating_key}"))
    order = sorted(range(len(items)), key=lambda i: -scores[i])  # stable: ties keep source order
    return {"prompt": prompt, "completions": [texts[i] for i in order], "scores": [scores[i] for i in order]}


@register_format(
    "ultrafeedback_binarized",
    schema="pairwise",
    consumes=("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
    description="UltraFeedback-binarized: 'chosen' / 'rejected' message lists with 'score_chosen' / 'score_rejected'",
)
def ultrafeedback_binarized_adapter(row: dict) -> dict:
    chosen, rejected = _require_list(row, "chosen"), _require_list(row, "rejected")
    prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_optional_scores(row, "score_chosen", "score_rejected")}


def _ultrafeedback_dispatch(columns: Collection[str]) -> str:
    if "completions" in columns:
        return "ultrafeedback_completions"
    if "chosen" in columns and "rejected" in columns:
        return "ultrafeedback_binarized"
    raise ValueError(
        f"format 'ultrafeedback' needs a 'completions' column (raw) or 'chosen' and 'rejected' (binarized); got {sorted(columns)}"
    )


_add(
    FormatSpec(
        "ultrafeedback",
        None,
        None,
        (),
        "UltraFeedback, raw (-> K-wise via ultrafeedback_completions) or binarized (-> pairwise via ultrafeedback_binarized)",
        dispatch=_ultrafeedback_dispatch,
    )
)


# --------------------------------------------------------------------------- shp


@register_format(
    "shp",
    schema="pairwise",
    consumes=("history", "human_ref_A", "human_ref_B", "score_A", "score_B"),
    description="Stanford SHP: 'history', 'human_ref_A' / 'human_ref_B', 'labels' (1: A preferred), 'score_A' / 'score_B'",
)
def shp_adapter(row: dict) -> dict:
    # 'labels' is kept as a pass-through column: it tells which of the A/B-suffixed metadata
    # columns (c_root_id_A, created_at_utc_A, ...) belong to the chosen response.
    prompt = _require_string(row, "history")
    response_a, response_b = _require_string(row, "human_ref_A"), _require_string(row, "human_ref_B")
    for name in ("history", "human_ref_A", "human_ref_B"):  # errors name the source column, not chosen/rejected
        check_text(row[name], name)
    label = _require(row, "labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise InvalidRowError(None, "labels", BAD_LABEL, f"got {label!r}")
    scores = _optional_scores(row, "score_A", "score_B")
    if label == 1:
        out = {"prompt": prompt, "chosen": response_a, "rejected": response_b}
        if scores:
            out.update(score_chosen=scores["score_chosen"], score_rejected=scores["score_rejected"])
    else:
        out = {"prompt": prompt, "chosen": response_b, "rejected": response_a}
        if scores:
            out.update(score_chosen=scores["score_rejected"], score_rejected=scores["score_chosen"])
    return out


# --------------------------------------------------------------------------- ranked / scored


def _aligned_scores(row: dict, key: str, length: int) -> list[float] | None:
    if row.get(key) is None:
        return None
    scores = _require_list(row, key)
    if len(scores) != length:
        raise InvalidRowError(None, key, LENGTH_MISMATCH, f"{len(scores)} {key} for {length} completions")
    return [check_score(score, f"{key}[{i}]") for i, score in enumerate(scores)]


@register_format(
    "ranked",
    schema="kwise",
    consumes=("prompt", "completions", "ranking", "scores"),
    description="prompt + 'completions' best first, or in any order with 'ranking' (completion indices, best first)",
)
def ranked_adapter(row: dict) -> dict:
    prompt = _require(row, "prompt")
    completions = _require_responses(row, "completions")
    scores = _aligned_scores(row, "scores", len(completions))
    if row.get("ranking") is not None:
        ranking = _require_list(row, "ranking")
        if len(ranking) != len(completions):
            raise InvalidRowError(None, "ranking", LENGTH_MISMATCH, f"{len(ranking)} ranks for {len(completions)} completions")
        # The same convention as the trainer's `ranking` column: completion indices, best first
        # ([2, 0, 1]: completion 2 is best), so a row means the same thing with or without this adapter.
        if any(isinstance(r, bool) or not isinstance(r, int) for r in ranking) or sorted(ranking) != list(range(len(ranking))):
            raise InvalidRowError(None, "ranking", NOT_PERMUTATION, f"expected the completion indices 0..{len(ranking) - 1} once each, best first, got {ranking}")
        completions = [completions[i] for i in ranking]
        scores = None if scores is None else [scores[i] for i in ranking]
    out = {"prompt": prompt, "completions": completions}
    if scores is not None:
        out["scores"] = scores
    return out


@register_format(
    "scored",
    schema="kwise",
    consumes=("prompt", "responses", "scores"),
    description="prompt + 'responses' + 'scores' (higher is better), sorted best first; tied scores stay tied",
)
def scored_adapter(row: dict) -> dict:
    prompt = _require(row, "prompt")
    responses = _require_responses(row, "responses")
    scores = _aligned_scores(row, "scores", len(responses))
    if scores is None:
        raise InvalidRowError(None, "scores", MISSING)
    order = sorted(range(len(responses)), key=lambda i: -scores[i])  # stable: ties keep source order
    return {"prompt": prompt, "completions": [responses[i] for i in order], "scores": [scores[i] for i in order]}
