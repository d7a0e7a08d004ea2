"""A report as a list of blocks, rendered to Markdown (report.md) or one HTML page (report.html).

The reports are composed once, as blocks (headings, paragraphs, tables, cards, figures);
the two renderers only decide how each kind of block looks, and escape every text they
print. Cards and figures are drawn in HTML only: in Markdown the tables carry the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aslquant.present.markup import html_text, md_code_block, md_code_span, md_text
from aslquant.present.tables import Card, Table


@dataclass(frozen=True)
class Strong:
    """Emphasised text inside a paragraph."""

    text: str


@dataclass(frozen=True)
class Mono:
    """Inline code inside a paragraph (a run key, a file name)."""

    text: str


Span = str | Strong | Mono


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    spans: tuple[Span, ...]
    muted: bool = False


@dataclass(frozen=True)
class CodeBlock:
    """Literal text shown as is (a shell command)."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Cards:
    cards: tuple[Card, ...]


@dataclass(frozen=True)
class Figure:
    """A Plotly figure, built only when HTML is rendered (``build`` returns a go.Figure)."""

    div_id: str
    build: Callable[[], object]


Block = Heading | Paragraph | CodeBlock | Bullets | Cards | Figure | Table


def paragraph(*spans: Span, muted: bool = False) -> Paragraph:
    return Paragraph(tuple(spans), muted)


def section(table: Table, *before: Block) -> list[Block]:
    """A table as a report section: its title as the heading, ``before`` between them."""
    return [Heading(table.title), *before, table]


# --- Markdown ----------------------------------------------------------------------------------


def _md_span(span: Span, first: bool) -> str:
    if isinstance(span, Strong):
        return f"**{md_text(span.text)}**"
    if isinstance(span, Mono):
        return md_code_span(span.text)
    return md_text(span, line_start=first)


def _md_block(block: Block) -> str | None:
    if isinstance(block, Heading):
        return "#" * block.level + " " + md_text(block.text)
    if isinstance(block, Paragraph):
        return "".join(_md_span(s, i == 0) for i, s in enumerate(block.spans))
    if isinstance(block, CodeBlock):
        return md_code_block(block.text)
    if isinstance(block, Bullets):
        return "\n".join("- " + md_text(item, line_start=True) for item in block.items)
    if isinstance(block, Table):
        return block.to_markdown()
    return None  # cards and figures: HTML only


def to_markdown(blocks: Iterable[Block]) -> str:
    """Markdown source of the blocks, each separated by a blank line."""
    parts = [text for text in map(_md_block, blocks) if text is not None]
    return "\n\n".join(parts) + "\n"


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light dark; }
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #8884; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.card { border: 1px solid #8886; border-radius: 8px; padding: .7rem 1rem; min-width: 170px; }
.card .t { font-size: .8rem; opacity: .75; } .card .v { font-size: 1.5rem; font-weight: 600; }
.card .s { font-size: .8rem; opacity: .75; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #8885; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code, pre { background: #8882; padding: .1rem .3rem; border-radius: 4px; }
pre { padding: .6rem; overflow-x: auto; white-space: pre-wrap; }
.muted { opacity: .75; font-size: .9rem; }
"""


def _html_span(span: Span) -> str:
    if isinstance(span, Strong):
        return f"<b>{html_text(span.text)}</b>"
    if isinstance(span, Mono):
        return f"<code>{html_text(span.text)}</code>"
    return html_text(span)


def _html_card(card: Card) -> str:
    return (
        f"<div class='card'><div class='t'>{html_text(card.title)}</div>"
        f"<div class='v'>{html_text(card.value)}</div>"
        f"<div class='s'>{html_text(card.note)}</div></div>"
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html_text(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        cls = " class='muted'" if block.muted else ""
        return f"<p{cls}>{''.join(map(_html_span, block.spans))}</p>"
    if isinstance(block, CodeBlock):
        return f"<pre>{html_text_lines(block.text)}</pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html_text(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Cards):
        return "<div class='cards'>" + "".join(map(_html_card, block.cards)) + "</div>"
    if isinstance(block, Figure):
        # plotly.js is in <head> once; each figure adds its div and a small script. Plotly
        # writes its data as JSON with "<" escaped, so names cannot close the script.
        return block.build().to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=block.div_id,
            config={"displaylogo": False, "responsive": True},
        )
    return block.to_html()


def html_text_lines(text: str) -> str:
    """Escaped text that keeps its line breaks (inside ``<pre>``)."""
    return "\n".join(html_text(line) for line in str(text).splitlines())


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained HTML page: plotly.js inlined once in the head, no network."""
    from plotly.offline import get_plotlyjs

    body = "\n".join(map(_html_block, blocks))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html_text(title)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
