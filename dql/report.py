"""Tables in reports, rendered by pandas: Markdown through `DataFrame.to_markdown` (tabulate),
LaTeX through `Styler.to_latex` (booktabs rules). One place for `dql table`, the perturbation
panel and the bench; each builds a frame of already formatted text cells."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of the frame's cells as they are (no number re-parsing)."""
    return frame.to_markdown(index=False, tablefmt="github", disable_numparse=True)


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex_table(
    frame: pd.DataFrame,
    *,
    caption: str,
    label: str,
    bold: pd.DataFrame | None = None,
    rule_before_row: int | None = None,
    header: Sequence[str] | None = None,
) -> str:
    """A booktabs table of text cells: the first column left-aligned, the rest centred; cells
    where `bold` (same shape) is True in bold; `rule_before_row` puts a \\midrule before that
    data row (e.g. between tasks and their averages); `header`: the column titles as LaTeX
    (default: the frame's, escaped). ± and – become $\\pm$ and --."""
    shown = frame.copy()
    shown.columns = list(header) if header else [latex_escape(str(c)) for c in frame.columns]
    styler = shown.style.hide(axis="index").format(escape="latex")
    if bold is not None:
        marks = np.where(bold.to_numpy(dtype=bool), "textbf:--rwrap;", "")
        styler = styler.apply(lambda _: marks, axis=None)
    text = styler.to_latex(
        caption=latex_escape(caption),
        label=label,
        position="t",
        position_float="centering",
        hrules=True,
        column_format="l" + "c" * (frame.shape[1] - 1),
    )
    lines = text.replace("±", r"$\pm$").replace("–", "--").splitlines()
    if rule_before_row is not None and 0 < rule_before_row < len(frame):
        first_row = lines.index(r"\midrule") + 1
        lines.insert(first_row + rule_before_row, r"\midrule")
    return "\n".join(lines) + "\n"
