"""Text made safe for Markdown and HTML: names from users render as the text they are.

Class names, file paths and labels come from uploaded files. In report.md a class named
``<img src=x onerror=alert(1)>`` must not become an image tag, one containing ``|`` must not
split a table cell, and one starting with ``#`` must not become a heading. Every text that
reaches Markdown or HTML goes through one of these functions; numbers we format ourselves go
through them too (they come out unchanged).
"""

from __future__ import annotations

import html
import re

#: Characters that start Markdown constructs anywhere in a line (CommonMark, GFM tables and
#: strikethrough, Streamlit's ``$math$``), escaped with a backslash; CommonMark lets any ASCII
#: punctuation be escaped that way.
_MD_ALWAYS = set("\\`*[]|~$#@")
#: HTML's specials become entities (a backslash before ``<`` is not honoured everywhere).
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
#: Characters that start a block (list item, heading underline) only at the start of a line.
_MD_LINE_START = set("-+=")
_ORDERED_ITEM = re.compile(r"^(\d+)([.)])(\s|$)")


def visible(text: object) -> str:
    """``str(text)`` with control characters shown as ``\\xNN`` (an ANSI escape in a file name
    cannot clear a terminal that prints the report); tabs and line breaks become spaces."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if ch in "\t\n\r":
            out.append(" ")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _needs_escape(s: str, i: int) -> bool:
    """Whether ``s[i]`` (not one of the always-escaped) could start markup where it stands."""
    ch = s[i]
    before = s[i - 1] if i > 0 else " "
    after = s[i + 1] if i + 1 < len(s) else " "
    if ch == "_":  # emphasis needs a word boundary: snake_case stays readable
        return not (before.isalnum() and after.isalnum())
    if ch == ":":  # "http://", Streamlit's ":emoji:" and ":red[...]"; not "Recipe: x"
        return not after.isspace()
    if ch == ".":  # "www.x" autolinks; not "93.10", "images." or "0 .. 1"
        return after.isalpha()
    return False


def md_text(text: object, *, line_start: bool = False) -> str:
    """Markdown source that renders as exactly ``text`` (after :func:`visible`), inline.

    Markup characters are escaped where they could start something (everywhere for most,
    at word boundaries for ``_``); numbers and plain prose come out unchanged.
    ``line_start``: the text begins a line (a paragraph, a list item's body), where ``-``,
    ``+``, ``1.``, ``1)`` and leading spaces would otherwise start a list or a code block.
    """
    s = visible(text)
    out: list[str] = []
    for i, ch in enumerate(s):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_ALWAYS or _needs_escape(s, i):
            out.append("\\" + ch)
        else:
            out.append(ch)
    if line_start and s:
        if s[0] in _MD_LINE_START:
            out[0] = "\\" + s[0]
        m = _ORDERED_ITEM.match(s)
        if m:
            out[len(m.group(1))] = "\\" + m.group(2)
        for idx, ch in enumerate(s):  # four leading spaces would start a code block
            if ch != " ":
                break
            out[idx] = "&#32;"
    return "".join(out)


def md_code_span(text: object) -> str:
    """Inline code: a backtick fence longer than any backtick run inside (content is literal)."""
    s = visible(text)
    fence = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def md_code_block(text: object) -> str:
    """A fenced code block whose fence no line inside can close."""
    lines = [visible(line) for line in str(text).splitlines()] or [""]
    body = "\n".join(lines)
    fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", body)), default=0) + 1)
    return f"{fence}\n{body}\n{fence}"


def html_text(text: object) -> str:
    """HTML text (quotes included, so it is also safe inside an attribute)."""
    return html.escape(visible(text), quote=True)
