"""Reading Markdown back as a CommonMark/GFM renderer would, for the escaping tests.

No Markdown library is installed, so the two rules the escaping relies on are spelled out:
a backslash before ASCII punctuation shows that character, entities show their character,
and a GFM table row splits on pipes that are not backslash-escaped.
"""

from __future__ import annotations

import html
import string


def md_unescape(source: str) -> str:
    """What CommonMark shows for inline text: backslash escapes and entities resolved."""
    out, i = [], 0
    while i < len(source):
        if source[i] == "\\" and i + 1 < len(source) and source[i + 1] in string.punctuation:
            out.append(source[i + 1])
            i += 2
        else:
            out.append(source[i])
            i += 1
    return html.unescape("".join(out))


def md_cells(row: str) -> list[str]:
    """A GFM table row's cells (Markdown source, trimmed), split on its unescaped pipes."""
    assert row.startswith("| ") and row.endswith(" |"), row
    body = row[1:-1]
    cells: list[str] = []
    cell: list[str] = []
    i = 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            cell.append(body[i : i + 2])
            i += 2
            continue
        if body[i] == "|":
            cells.append("".join(cell).strip())
            cell = []
        else:
            cell.append(body[i])
        i += 1
    cells.append("".join(cell).strip())
    return cells


def md_table_rows(md: str, header_start: str) -> list[list[str]]:
    """The cells, as shown, of the first table whose header row starts with ``header_start``."""
    lines = md.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([md_unescape(c) for c in md_cells(line)])
    return rows
