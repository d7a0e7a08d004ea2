"""report.json, report.md, report.html: rendered from the report dict alone, escaped, written once.

- A report dict and the same dict after a JSON round trip (what a loaded report.json is)
  render to identical Markdown and HTML.
- Hostile class names and file paths, from a real CLI run on a labels file and image folders
  named after them, render as text: no HTML element, no Markdown construct, no split cell.
- Pending latency (a result before its timing) renders as "pending".
"""

from __future__ import annotations

import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from aslquant import analysis, experiments
from aslquant.cli import main
from aslquant.data import Preprocess
from aslquant.labels import load_labels
from aslquant.present import tables
from aslquant.present.markup import visible
from aslquant.recipe import QuantRecipe
from aslquant.report import (
    REPORT_FILES,
    report_dict,
    report_html,
    report_markdown,
    run_report_texts,
    sweep_report,
    sweep_report_texts,
    write_run_reports,
    write_sweep_reports,
)
from aslquant.run import DEMO_DATA, DEMO_LABELS, RunConfig, execute, time_run
from tests.markdown_reading import md_table_rows


def round_trip(report: dict) -> dict:
    return json.loads(json.dumps(report))


class Elements(HTMLParser):
    """Every element and attribute a browser would build from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]


def elements(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


#: Every element report.html is made of; anything else came from data.
REPORT_ELEMENTS = {
    "html", "head", "meta", "title", "style", "script", "body", "h1", "h2", "p", "b", "code",
    "pre", "div", "table", "thead", "tbody", "tr", "th", "td", "ul", "li",
}  # fmt: skip


#: Rendering depends on the report's structure, not on the demo's figures: every run here is
#: at 96 px, about 5x cheaper than the demo's 224 (timing included).
SMALL = Preprocess(input_size=96)


# --- rendered from the dict alone --------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated():
    config = RunConfig(
        eval_images=58, recipe=QuantRecipe(calib_images=32), latency_runs=30, preprocess=SMALL
    )
    return execute(config, timed=False)


@pytest.fixture(scope="module")
def sections(evaluated):
    sens = analysis.sensitivity(evaluated, max_images=29)
    return {
        "layers": analysis.layer_errors(evaluated, max_images=16),
        "sensitivity": sens,
        "bit_sweep": analysis.bit_sweep(evaluated, max_images=29),
        "mixed_precision": analysis.greedy_mixed_precision(
            evaluated, 100.0, max_images=29, ranking=sens
        ),
    }


@pytest.mark.slow
def test_pending_report_renders_the_same_after_a_json_round_trip(evaluated, sections, tmp_path):
    report = report_dict(evaluated, sections, notes=["a note about `x` | y"])
    assert report["latency_ratio_b1"] is None and report["int8"]["latency_ms"] is None
    loaded = round_trip(report)
    assert loaded == report
    md, page = report_markdown(report), report_html(report)
    assert md == report_markdown(loaded) and page == report_html(loaded)
    assert "| latency batch 1 p50 / p95 (ms) | pending | pending | pending |" in md
    for heading in ("## Per-layer error", "## Sensitivity", "## Bit-width sweep",
                    "## Mixed precision search", "## Per-class accuracy"):  # fmt: skip
        assert heading in md
    for div in ("sqnr", "sensitivity", "bits", "conf_fp32", "conf_int8", "conf_d"):
        assert f'id="{div}"' in page
    # The files hold exactly the texts the Export page offers, written by one function.
    files = write_run_reports(report, tmp_path)
    texts = run_report_texts(loaded)
    assert {k: p.name for k, p in files.items()} == REPORT_FILES
    for kind, path in files.items():
        assert path.read_text(encoding="utf-8") == texts[kind]
    assert json.loads(files["json"].read_text()) == report


@pytest.mark.slow
def test_timed_report_renders_the_same_after_a_json_round_trip(evaluated, sections):
    report = report_dict(time_run(evaluated), sections)
    assert report["latency_ratio_b32"] > 0
    assert run_report_texts(report) == run_report_texts(round_trip(report))
    assert "pending" not in report_markdown(report)


@pytest.mark.slow
def test_sweep_report_renders_the_same_after_a_json_round_trip(tmp_path):
    config = RunConfig(
        eval_images=29, recipe=QuantRecipe(calib_images=16), latency_runs=30, preprocess=SMALL
    )
    grid = {"act_observer": ["minmax"]}
    rows = [r.to_dict() for r in experiments.config_sweep(config, grid, latency_runs=30)]
    report = sweep_report(config, config.cli_command("sweep"), grid, rows)
    texts = sweep_report_texts(report)
    assert texts == sweep_report_texts(round_trip(report))
    table = md_table_rows(texts["md"], "| row | config |")
    assert [r[0] for r in table] == [str(i + 1) for i in range(len(rows))]
    assert [r[1] for r in table] == [r["label"] for r in rows]
    assert table[0][1] == "FP32 (reference)" and len(rows) >= 2
    assert [r[2] for r in table] == [f"{100 * r['accuracy']:.2f}" for r in rows]
    assert all(r[-1] == "" for r in table)  # no errors: the note column is blank
    assert 'id="pareto"' in texts["html"] and rows[1]["label"] in texts["html"]
    # The cards name the most accurate measured recipes, never the FP32 reference.
    cards = tables.sweep_cards(rows)
    measured = sorted((r for r in rows[1:] if r.get("accuracy") is not None),
                      key=lambda r: -r["accuracy"])  # fmt: skip
    assert [c.value for c in cards] == [f"{100 * r['accuracy']:.2f}%" for r in measured[:3]]
    assert all(c.title != "FP32 (reference)" and c.title in texts["html"] for c in cards)
    files = write_sweep_reports(report, tmp_path)
    assert files["md"].read_text(encoding="utf-8") == texts["md"]


# --- hostile names -----------------------------------------------------------------------------

#: Class names a labels file may legally hold (and folders carry): markup of every kind.
HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)<\\script>",
    "a|b",
    "# heading",
    "**bold**",
    "[link](javascript:alert(1))",
    "`code`",
    "- item",
    "1. first",
    "> quote",
    "$x^2$",
    ":red[x]",
    "&amp;",
    "~~strike~~",
    "_em_",
    "</td></tr>",  # replaced below: "/" cannot be in a folder name
]
HOSTILE_NAMES[-1] = "<td>cell<td>"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A CLI report on the demo images, in folders named after hostile class names."""
    root = tmp_path_factory.mktemp("hostile")
    demo = load_labels(DEMO_LABELS)
    names = HOSTILE_NAMES + demo[len(HOSTILE_NAMES) :]
    (root / "labels.json").write_text(json.dumps(names), encoding="utf-8")
    data = root / "data"
    for old, new in zip(demo, names, strict=True):
        target = data / new
        target.mkdir(parents=True)
        for image in sorted((Path(DEMO_DATA) / old).iterdir())[:2]:
            shutil.copy(image, target / image.name)
    # A file that is not an image, named to inject markup, ends up in the skipped list.
    (data / names[0] / "<b>bold</b>.jpg".replace("/", "")).write_text("not an image")
    out = root / "out"
    args = ["report", "--labels", str(root / "labels.json"), "--data", str(data)]
    args += ["--calib-images", "16", "--eval-images", "29", "--latency-runs", "30"]
    args += ["--input-size", str(SMALL.input_size)]
    assert main([*args, "--out", str(out)]) == 0
    return out, names


@pytest.mark.slow
def test_hostile_names_render_as_text_in_markdown(hostile_run):
    out, names = hostile_run
    md = (out / "report.md").read_text(encoding="utf-8")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["class_names"] == names
    assert md == report_markdown(report)
    assert "<" not in md  # no HTML of any kind can open
    per_class = md_table_rows(md, "| class |")
    assert [row[0] for row in per_class] == names  # one cell each, read back as written
    assert all(len(row) == 6 for row in per_class)
    lines = md.split("\n")
    for name in HOSTILE_NAMES:  # no name starts a heading, list, quote or block of its own
        assert not any(line.startswith(name) for line in lines), name
    if report["flipped"]:
        flipped = md_table_rows(md, "| image |")
        assert [row[0] for row in flipped] == [r["path"] for r in report["flipped"]]
        assert all(row[1] in names for row in flipped)
    skipped = md_table_rows(md, "| file |")
    assert [row[0] for row in skipped] == [visible(r["path"]) for r in report["skipped"]]
    assert any("<b>" in row[0] for row in skipped)


@pytest.mark.slow
def test_hostile_names_render_as_text_in_html(hostile_run):
    out, names = hostile_run
    page = (out / "report.html").read_text(encoding="utf-8")
    found = elements(page)
    assert set(found.tags) <= REPORT_ELEMENTS, set(found.tags) - REPORT_ELEMENTS
    assert not any(a.startswith("on") for a in found.attrs)
    # one plotly.js, then one script per figure: none came from a name
    assert found.tags.count("script") == 1 + page.count('class="plotly-graph-div"')
    for name in names:
        assert html.escape(name) in page
