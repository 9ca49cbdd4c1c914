"""Row-level validation of the canonical schemas, and the error / report types adapters share.

Every check raises `InvalidRowError(row, field, reason, detail)`. ``reason`` is one of the fixed
strings in `REASONS`, so that ``on_invalid="drop"`` can count dropped rows per reason; ``detail``
carries the row-specific part of the message (which message, which value).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefopt.chat import is_conversational  # noqa: F401  (the one home of message forms; data/ imports nothing else of prefopt)

logger = logging.getLogger("prefopt.data")

PAIRWISE_COLUMNS = ("prompt", "chosen", "rejected")
PAIRWISE_SCORE_COLUMNS = ("score_chosen", "score_rejected")
KWISE_COLUMNS = ("prompt", "completions")
KWISE_SCORE_COLUMNS = ("scores",)

MISSING = "missing field"
NOT_TEXT = "not a string or a list of messages"
MALFORMED_MESSAGE = "malformed message"
EMPTY = "empty text"
IDENTICAL = "chosen identical to rejected"
DUPLICATE = "duplicate completions"
TOO_FEW = "fewer than 2 completions"
NOT_A_LIST = "not a list"
NOT_A_NUMBER = "score is not a number"
NON_FINITE = "score is NaN or infinite"
NOT_PERMUTATION = "ranking is not a permutation"
LENGTH_MISMATCH = "mismatched list lengths"
UNSORTED_SCORES = "scores not in best-first order"
TIED_SCORES = "tied scores are not a preference"
CONTRADICTING_SCORES = "scores contradict the preference"
MIXED_FORMS = "mixes standard and conversational forms"
BAD_LABEL = "label is not 0 or 1"
BAD_TRANSCRIPT = "unparseable transcript"
NO_PROMPT = "no shared prompt"
MIXED_TYPES = "column holds values of another type"

REASONS = (
    MISSING, NOT_TEXT, MALFORMED_MESSAGE, EMPTY, IDENTICAL, DUPLICATE, TOO_FEW, NOT_A_LIST, NOT_A_NUMBER,
    NON_FINITE, NOT_PERMUTATION, LENGTH_MISMATCH, UNSORTED_SCORES, TIED_SCORES, CONTRADICTING_SCORES,
    MIXED_FORMS, BAD_LABEL, BAD_TRANSCRIPT, NO_PROMPT, MIXED_TYPES,
)


class InvalidRowError(ValueError):
    """A source row that cannot become a canonical row: ``row 17, field 'chosen': empty text``, or
    ``pairs.jsonl, line 18 (row 17), field 'chosen': empty text`` when it comes from a file."""

    def __init__(self, row: int | None, field: str, reason: str, detail: str | None = None, location: str | None = None):
        self.row = row
        self.field = field
        self.reason = reason
        self.detail = detail
        self.location = location  # "file, line N" for a row read from a file
        where = f"row {row}, field {field!r}" if row is not None else f"field {field!r}"
        if location is not None:
            where = f"{location} ({where.replace(', field', '), field', 1)}" if row is not None else f"{location}, {where}"
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def at_row(self, row: int, location: str | None = None) -> "InvalidRowError":
        """The same error re-addressed to ``row`` (checks run on one row do not know its index or file line)."""
        return InvalidRowError(row, self.field, self.reason, self.detail, location)


@dataclass
class ValidationReport:
    """What happened to the rows of one split: how many came in, were kept, and why others were dropped."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> number of rows
    examples: list[str] = field(default_factory=list)  # the first few error messages, for the log
    notes: Counter = field(default_factory=Counter)  # non-error events, e.g. "tied pair skipped"
    pairs: int | None = None  # to_pairs only: pairs made from the `kept` rows

    MAX_EXAMPLES = 5

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def record(self, error: InvalidRowError) -> None:
        self.dropped[error.reason] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(str(error))

    def summary(self) -> str:
        parts = [f"kept {self.kept} of {self.total} rows"]
        if self.pairs is not None:
            parts[0] += f", made {self.pairs} pairs"
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} x {reason!r}" for reason, n in self.dropped.most_common()))
        if self.notes:
            parts.append(", ".join(f"{n} x {note}" for note, n in self.notes.most_common()))
        return "; ".join(parts)

    def log(self, what: str) -> None:
        """A warning when anything was dropped or skipped, so that nothing disappears silently."""
        if self.dropped or self.notes:
            examples = ("; e.g. " + " | ".join(self.examples)) if self.examples else ""
            logger.warning("%s: %s%s", what, self.summary(), examples)


# --------------------------------------------------------------------------- text and messages


def check_text(value: Any, field: str, *, completion: bool = False) -> str:
    """Check one prompt / completion; returns its form, "standard" or "conversational".

    A completion in conversational form must start with an assistant message, because the chat
    template renders it after the prompt as the model's turn.
    """
    if value is None:
        raise InvalidRowError(None, field, MISSING)
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRowError(None, field, EMPTY)
        return "standard"
    if not isinstance(value, list):
        raise InvalidRowError(None, field, NOT_TEXT, f"got {type(value).__name__}")
    if not value:
        raise InvalidRowError(None, field, EMPTY, "no messages")
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidRowError(None, field, NOT_TEXT, f"message {position} is a {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidRowError(None, field, MALFORMED_MESSAGE, f"message {position} has no string 'role'")
        if not isinstance(content, str):
            raise InvalidRowError(None, field, MALFORMED_MESSAGE, f"message {position} has no string 'content'")
        if not content.strip():
            raise InvalidRowError(None, field, EMPTY, f"message {position} ({role})")
    if completion and value[0]["role"] != "assistant":
        raise InvalidRowError(None, field, MALFORMED_MESSAGE, f"a completion must start with an assistant message, got {value[0]['role']!r}")
    if completion and value[-1]["role"] != "assistant":
        # Training on it would teach the model to write the user's next turn as part of its answer.
        raise InvalidRowError(None, field, MALFORMED_MESSAGE, f"a completion must end with an assistant message, got {value[-1]['role']!r}")
    return "conversational"


def value_kind(value: Any) -> str | None:
    """What an Arrow column must hold for ``value``: "number", "string", "list of string", ...; None for null.

    int and float are one kind (Arrow widens them); a list's kind includes its first non-null item's
    kind, and a list whose items differ in kind is "mixed list".
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        kinds = {kind for kind in map(value_kind, value) if kind is not None}
        if len(kinds) > 1:
            return "mixed list"
        return f"list of {kinds.pop()}" if kinds else "list"
    return type(value).__name__


def check_score(value: Any, field: str) -> float | None:
    """None (no score) or a finite number, returned as float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRowError(None, field, NOT_A_NUMBER, f"got {value!r}")
    if not math.isfinite(value):
        raise InvalidRowError(None, field, NON_FINITE, f"got {value!r}")
    return float(value)


def _same_form(forms: dict[str, str]) -> str:
    distinct = set(forms.values())
    if len(distinct) > 1:
        detail = ", ".join(f"{name} is {form}" for name, form in forms.items())
        raise InvalidRowError(None, next(iter(forms)), MIXED_FORMS, detail)
    return distinct.pop()


# --------------------------------------------------------------------------- canonical rows


def check_pairwise_row(row: dict) -> str:
    """Validate a canonical pairwise row in place; returns its form ("standard" / "conversational")."""
    forms = {"prompt": check_text(row.get("prompt"), "prompt")}
    forms["chosen"] = check_text(row.get("chosen"), "chosen", completion=True)
    forms["rejected"] = check_text(row.get("rejected"), "rejected", completion=True)
    form = _same_form(forms)
    if row["chosen"] == row["rejected"]:
        raise InvalidRowError(None, "chosen", IDENTICAL)
    score_chosen = check_score(row.get("score_chosen"), "score_chosen")
    score_rejected = check_score(row.get("score_rejected"), "score_rejected")
    if score_chosen is not None and score_rejected is not None:
        # A tie is not a preference (the same rule as to_pairs), and a chosen response scored below
        # the rejected one means the label and the scores disagree; either would train on noise.
        if score_chosen == score_rejected:
            raise InvalidRowError(None, "score_chosen", TIED_SCORES, f"both {score_chosen}")
        if score_chosen < score_rejected:
            raise InvalidRowError(None, "score_chosen", CONTRADICTING_SCORES, f"{score_chosen} < {score_rejected}")
    elif (score_chosen is None) != (score_rejected is None):
        missing = "score_chosen" if score_chosen is None else "score_rejected"
        raise InvalidRowError(None, missing, MISSING, "scores must be given for both responses or neither")
    return form


def check_kwise_row(row: dict) -> str:
    """Validate a canonical K-wise row (completions best first, optional scores in the same order)."""
    forms = {"prompt": check_text(row.get("prompt"), "prompt")}
    completions = row.get("completions")
    if completions is None:
        raise InvalidRowError(None, "completions", MISSING)
    if not isinstance(completions, list):
        raise InvalidRowError(None, "completions", NOT_A_LIST, f"got {type(completions).__name__}")
    if len(completions) < 2:
        raise InvalidRowError(None, "completions", TOO_FEW, f"got {len(completions)}")
    for position, completion in enumerate(completions):
        forms[f"completions[{position}]"] = check_text(completion, f"completions[{position}]", completion=True)
    form = _same_form(forms)
    seen: dict[str, int] = {}
    for position, completion in enumerate(completions):
        key = repr(completion)
        if key in seen:
            raise InvalidRowError(None, "completions", DUPLICATE, f"completions {seen[key]} and {position} are identical")
        seen[key] = position
    scores = row.get("scores")
    if scores is not None:
        if not isinstance(scores, list):
            raise InvalidRowError(None, "scores", NOT_A_LIST, f"got {type(scores).__name__}")
        if len(scores) != len(completions):
            raise InvalidRowError(None, "scores", LENGTH_MISMATCH, f"{len(scores)} scores for {len(completions)} completions")
        checked = [check_score(score, f"scores[{i}]") for i, score in enumerate(scores)]
        if any(score is None for score in checked):
            raise InvalidRowError(None, "scores", MISSING, "a score is None")
        for i in range(len(checked) - 1):
            if checked[i] < checked[i + 1]:
                raise InvalidRowError(None, "scores", UNSORTED_SCORES, f"scores[{i}]={checked[i]} < scores[{i + 1}]={checked[i + 1]}")
    return form
