"""One Markdown table writer and cell formats for every report the tools print (bench, experiment grid, SFR/SSL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int | None = None) -> str:
    """A Markdown table; columns from ``numeric_from`` on are right-aligned (``---:``)."""
    align = ["---:" if numeric_from is not None and i >= numeric_from else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: score-record keys of the vessel metrics beside Dice (``evaluate_command.summary_scores``)
BINARY_CLDICE, PER_CLASS_CLDICE, BINARY_BETTI0 = "binary_cldice", "per_class_cldice", "binary_betti0_error"


def vessel_header(class_names: Sequence[str]) -> list[str]:
    """Column names of :func:`vessel_values`: binary clDice, each class's clDice, binary Betti-0 error."""
    return ["binary clDice", *(f"{name} clDice" for name in class_names), "binary Betti-0 error"]


def vessel_values(record: dict, classes: Sequence[str]) -> list[float | None]:
    """Binary clDice, the clDice of each class key, binary Betti-0 error; None where the record has none.

    Records written before the vessel metrics existed (cached runs) lack them.
    """
    per_class = record.get(PER_CLASS_CLDICE, {})
    return [record.get(BINARY_CLDICE), *(per_class.get(c) for c in classes), record.get(BINARY_BETTI0)]


def score_cell(value: float | None, digits: int = 4) -> str:
    """A score with ``digits`` decimals, or ``-`` when it is missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def mean_std_cell(values: Sequence[float | None], digits: int = 4) -> str:
    """``mean ± std`` (population std) of ``values``; ``-`` when any is missing (an old record) or none given."""
    if not values or any(v is None for v in values):
        return "-"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _digits(values: Sequence) -> list[int]:
    return [4] * (len(values) - 1) + [2]  # clDice columns, then the Betti-0 error


def vessel_cells(record: dict, classes: Sequence[str]) -> list[str]:
    """The :func:`vessel_values` of one record as table cells (``-`` where missing)."""
    values = vessel_values(record, classes)
    return [score_cell(v, d) for v, d in zip(values, _digits(values))]


def vessel_mean_std_cells(records: Sequence[dict], classes: Sequence[str]) -> list[str]:
    """``mean ± std`` over ``records`` of each :func:`vessel_values` column (``-`` if a record lacks it)."""
    columns = [list(c) for c in zip(*(vessel_values(r, classes) for r in records))]
    return [mean_std_cell(c, d) for c, d in zip(columns, _digits(columns))]
