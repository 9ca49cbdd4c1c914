"""Views of the loss registry: the README's markdown table, a terminal-width table and one loss's card.

All three are generated from the registered `LossSpec`s; nothing here lists losses by hand.
"""

from __future__ import annotations

import inspect
import re
import shutil
import textwrap
from pathlib import Path

from ._registry import LossSpec, get_loss, list_losses

BEGIN, END = "<!-- losses-table:start -->", "<!-- losses-table:end -->"
_RESPONSES = {"pair": "2", "ranked": "K >= 2", "single": "1 (sampled)"}
_TERMINAL_RESPONSES = {"pair": "2", "ranked": ">=2", "single": "1"}


def _default(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _extra_fields(spec: LossSpec) -> list[str]:
    return [f for f in spec.required_fields if f not in ("policy", "reference")]


def terminal_table(width: int | None = None) -> str:
    """The registry as a plain-text table no wider than ``width`` (default: the terminal's width).

    Long cells wrap inside their column; `loss_card` gives one loss in full.
    """
    width = width or shutil.get_terminal_size((100, 24)).columns
    headers = ["loss", "K", "ref", "other fields", "hyper-parameters", "TRL loss_type"]
    rows = []
    for name in list_losses():
        spec = get_loss(name)
        rows.append([
            name,
            _TERMINAL_RESPONSES[spec.responses],
            "yes" if spec.needs_reference else "no",
            ", ".join(_extra_fields(spec)) or "-",
            ", ".join(f"{k}={_default(v)}" for k, v in spec.hyperparameters.items()) or "-",
            spec.trl_name or "-",
        ])
    footer = (
        "K: responses per example (1 = one sampled response); ref: needs a reference model. "
        "prefopt losses NAME: one loss in full (formula, ranges, paper); --markdown: the README table."
    )
    return _fit_table(headers, rows, width) + "\n\n" + "\n".join(textwrap.wrap(footer, width))


def _fit_table(headers: list[str], rows: list[list[str]], width: int) -> str:
    """Columns separated by two spaces; the widest column gives up characters (its cells wrap at spaces)
    until the table fits or every column is down to its longest word."""
    columns = list(zip(headers, *rows))
    widths = [max(len(cell) for cell in column) for column in columns]
    narrowest = [max(len(word) for cell in column for word in cell.split() or [""]) for column in columns]
    separator = "  "
    while sum(widths) + len(separator) * (len(widths) - 1) > width:
        shrinkable = [i for i in range(len(widths)) if widths[i] > narrowest[i]]
        if not shrinkable:
            break  # a terminal this narrow gets the narrowest table that breaks no word
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1

    def render(cells: list[str]) -> list[str]:
        wrapped = [textwrap.wrap(cell, w, break_long_words=False, break_on_hyphens=False) or [""] for cell, w in zip(cells, widths)]
        height = max(len(lines) for lines in wrapped)
        return [
            separator.join((lines[i] if i < len(lines) else "").ljust(w) for lines, w in zip(wrapped, widths)).rstrip()
            for i in range(height)
        ]

    lines = render(headers) + [separator.join("-" * w for w in widths)]
    for row in rows:
        lines += render(row)
    return "\n".join(lines)


def loss_card(name: str, width: int | None = None) -> str:
    """Everything the registry knows about loss ``name``, as text: formula, fields, hyper-parameters, paper."""
    spec = get_loss(name)
    width = width or shutil.get_terminal_size((100, 24)).columns
    hyperparameter_lines = []
    for hyper, default in spec.hyperparameters.items():
        allowed = []
        if hyper in spec.choices:
            allowed.append("one of " + ", ".join(repr(c) for c in spec.choices[hyper]))
        if hyper in spec.ranges:
            allowed.append(f"a finite number {spec.ranges[hyper]}".rstrip())
        hyperparameter_lines.append(f"  {hyper} = {_default(default)}" + (f"  ({'; '.join(allowed)})" if allowed else ""))
    facts = [
        ("loss", f"{spec.summary}   (per example)"),
        ("responses", {"pair": "exactly 2 per example (chosen, rejected)", "ranked": "K >= 2 per example, ranked best first",
                       "single": "1 sampled response per example"}[spec.responses]),
        ("reference model", "yes" if spec.needs_reference else "no"),
        ("LogProbs fields", ", ".join(spec.required_fields)),
        ("TRL loss_type", spec.trl_name or "- (not in TRL 1.16)"),
        ("batch-coupled", "yes: one example's loss depends on the rest of the batch" if spec.batch_coupled else "no"),
        ("paper", spec.paper),
    ]
    if spec.arxiv:
        facts.append(("arXiv", f"{spec.arxiv}  https://arxiv.org/abs/{spec.arxiv}"))
    label_width = max(len(label) for label, _ in facts) + 2
    lines = [name, "=" * len(name)]
    for label, value in facts:
        wrapped = textwrap.wrap(value, max(width - label_width, 20)) or [""]
        lines.append(f"{label + ':':<{label_width}}{wrapped[0]}")
        lines += [" " * label_width + more for more in wrapped[1:]]
    lines += ["hyper-parameters:"] + (hyperparameter_lines or ["  none"])
    module_doc = inspect.getdoc(inspect.getmodule(spec.function))
    if module_doc:
        lines += ["", module_doc]
    return "\n".join(lines)


def markdown_table() -> str:
    rows = [
        "| loss | per-example loss | responses | reference | other fields | hyper-parameters (default) | TRL `loss_type` | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in list_losses():
        spec = get_loss(name)
        extra = _extra_fields(spec)
        hyper = ", ".join(f"{k} ({_default(v)})" for k, v in spec.hyperparameters.items())
        paper = spec.paper + (f" [arXiv:{spec.arxiv}](https://arxiv.org/abs/{spec.arxiv})" if spec.arxiv else "")
        rows.append(
            f"| `{name}` | {spec.summary.replace('|', '&#124;')} | {_RESPONSES[spec.responses]} | "
            f"{'yes' if spec.needs_reference else 'no'} | {', '.join(extra) or '-'} | {hyper or '-'} | "
            f"{'`' + spec.trl_name + '`' if spec.trl_name else '-'} | {paper} |"
        )
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the table markers replaced by the current table."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), flags=re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"the README has no {BEGIN} ... {END} block to fill")
    return pattern.sub(lambda _: f"{BEGIN}\n{markdown_table()}\n{END}", readme)


def update_readme(path: str | Path) -> bool:
    """Rewrite the table in ``path``; returns whether anything changed."""
    path = Path(path)
    old = path.read_text()
    new = readme_with_table(old)
    if new != old:
        path.write_text(new)
    return new != old
