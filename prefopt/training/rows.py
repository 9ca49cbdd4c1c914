"""Can these rows feed this loss? Row checks with errors that name the rows and the problem.

`is_kwise_example` is the one test of a row's layout: K-wise (``completions``, best first) or pairwise
(``chosen`` / ``rejected``). `PreferenceRows` checks, before training, that the loss can be served at all (from
the first row: a pairwise loss on rankings, a field no provider can fill from this data) and then every row
(map-style datasets now, naming the rows; streamed rows as they come). `PromptRows` is the same for a trainer
whose rows are prompts (f-DPG). `prefopt.Trainer` picks the class from its ``rows_class`` attribute.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from datasets import Dataset, IterableDataset

from prefopt.chat import is_conversational

PAIR_COLUMNS = ("chosen", "rejected", "chosen_ids", "rejected_ids")
KWISE_COLUMNS = ("completions", "completions_ids")


def is_kwise_example(example: Mapping[str, Any]) -> bool:
    """Whether the row holds K-wise completions (a ``completions`` column whose value is None in this row does not
    count): the one K-wise test of prefopt's trainer, collator, field providers and summaries."""
    return any(example.get(column) is not None for column in KWISE_COLUMNS)


def first_row(dataset, name: str) -> dict[str, Any]:
    try:
        return next(iter(dataset))
    except StopIteration:
        raise ValueError(f"the {name} dataset has 0 rows; nothing to train on") from None


def check_every_row(dataset, name: str, problem: Callable[[Mapping[str, Any]], str | None],
                    columns: Iterable[str] | None = None):
    """``dataset`` after checking every row with ``problem`` (the reason a row cannot be used, or None): a map-style
    dataset now, raising once with every failing row grouped by problem; an iterable one as rows stream, raising at
    the first. ``columns`` limits what is read from a map-style dataset (None: every column)."""
    if isinstance(dataset, IterableDataset):
        def check(example, index):
            reason = problem(example)
            if reason:
                raise ValueError(f"{name} dataset, row {index}: {reason}")
            return example

        return dataset.map(check, with_indices=True)
    if not isinstance(dataset, Dataset):
        return dataset
    if len(dataset) == 0:
        raise ValueError(f"the {name} dataset has 0 rows; nothing to train or evaluate on")
    if columns is not None:
        dataset_columns = [column for column in dataset.column_names if column in set(columns)]
        subset = dataset.select_columns(dataset_columns)
    else:
        subset = dataset
    problems: dict[str, list[int]] = {}
    for index, example in enumerate(subset):
        reason = problem(example)
        if reason:
            problems.setdefault(reason, []).append(index)
    if problems:
        lines = [
            f"  rows {rows[:10]}{f' and {len(rows) - 10} more' if len(rows) > 10 else ''}: {reason}"
            for reason, rows in problems.items()
        ]
        total = sum(len(rows) for rows in problems.values())
        raise ValueError(f"the {name} dataset has {total} of {len(dataset)} rows the loss cannot train on:\n"
                         + "\n".join(lines))
    return dataset


class PreferenceRows:
    """Rows of preference data (pairs or rankings) for ``loss`` (a `prefopt.losses.WeightedLoss`), whose fields
    come from ``fields`` (a `prefopt.training.fields.FieldSet`); ``kwise`` is the first row's layout."""

    def __init__(self, loss, fields, kwise: bool):
        self.loss, self.fields, self.kwise = loss, fields, kwise

    def check_first(self, example: Mapping[str, Any]) -> None:
        """Raise when the loss cannot be served by data like ``example`` (the first row)."""
        loss, names = self.loss, list(self.loss.names)
        if loss.responses == "single":
            raise ValueError(
                f"loss {names} trains on one on-policy sample per prompt with proposal/target log-probs; the offline "
                "Trainer serves preference datasets (pairs or rankings). Use it in an online loop instead."
            )
        if self.kwise and not loss.kwise:
            raise ValueError(
                f"the dataset is K-wise (`completions` column) but loss {names} is pairwise; use a ranked loss "
                "(a registry spec with responses='ranked', e.g. 'plackett_luce') or split the rankings into pairs "
                "with a prefopt.data adapter"
            )
        for provider in self.fields.row_providers:
            provider.check(example, self.kwise, names)

    def problem(self, example: Mapping[str, Any]) -> str | None:
        """Why this row cannot feed the loss (layout other than the first row's, a missing field value), or None."""
        kwise = is_kwise_example(example)
        pair = any(example.get(column) is not None for column in PAIR_COLUMNS)
        if kwise and pair:
            return "the row has both `completions` (K-wise) and `chosen`/`rejected` (pairwise) values"
        if kwise != self.kwise or not (kwise or pair):
            found = "K-wise `completions`" if kwise else "pairwise `chosen`/`rejected`" if pair else "no responses"
            expected = "K-wise `completions`" if self.kwise else "pairwise `chosen`/`rejected`"
            return f"the row has {found}, the first row {expected} (one dataset holds one layout)"
        names = list(self.loss.names)
        for provider in self.fields.row_providers:
            try:
                provider.check(example, self.kwise, names)
            except ValueError as error:
                return str(error)
        return None

    def check_every_row(self, dataset, name: str):
        read = {*KWISE_COLUMNS, *PAIR_COLUMNS, "prompt"}
        for provider in self.fields.row_providers:
            read.update(provider.columns())
        return check_every_row(dataset, name, self.problem, read)


class PromptRows:
    """Rows that are prompts (on-policy training samples its own responses): each needs a non-empty ``prompt``."""

    def __init__(self, loss=None, fields=None, kwise: bool = False):
        self.kwise = False

    def check_first(self, example: Mapping[str, Any]) -> None:
        if "prompt" not in example:
            raise ValueError(f"this trainer trains on prompts: the dataset needs a 'prompt' column, it has {sorted(example)}")

    def problem(self, example: Mapping[str, Any]) -> str | None:
        prompt = example.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()) and not is_conversational(prompt):
            return "'prompt' must be non-empty text or a message list"
        return None

    def check_every_row(self, dataset, name: str):
        return check_every_row(dataset, name, self.problem, ("prompt",))
