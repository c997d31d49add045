"""One Markdown table writer for every report the tools print (bench, experiment grid, SFR report)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int | None = None) -> str:
    """A Markdown table; columns from ``numeric_from`` on are right-aligned (``---:``)."""
    align = ["---:" if numeric_from is not None and i >= numeric_from else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
