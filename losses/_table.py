"""The README's loss table, generated from the registry (the README never lists losses by hand)."""

from __future__ import annotations

import re
from pathlib import Path

from ._registry import get_loss, list_losses

BEGIN, END = "<!-- losses-table:start -->", "<!-- losses-table:end -->"
_RESPONSES = {"pair": "2", "ranked": "K >= 2", "single": "1 (sampled)"}


def markdown_table() -> str:
    rows = [
        "| loss | per-example loss | responses | reference | other fields | hyper-parameters (default) | TRL `loss_type` | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in list_losses():
        spec = get_loss(name)
        extra = [f for f in spec.required_fields if f not in ("policy", "reference")]
        hyper = ", ".join(f"{k} ({v:.4g})" if isinstance(v, float) else f"{k} ({v!r})" for k, v in spec.hyperparameters.items())
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
