"""A run or a sweep -> report.json, report.md, report.html (the CLI's and the dashboard's output).

The JSON keys are a contract: tests and CI gates read them. ``report_dict`` builds the content
once from a run and its analysis sections (new values computed beside the run; the run itself
is never changed). report.md and report.html are rendered from that dict alone, through the
tables and figures of ``aslquant.present``, so a report.json loaded later renders the same.
``run_report_texts`` / ``sweep_report_texts`` give the three texts (the dashboard's Export page
offers them for download); ``write_report_texts`` is the one function that writes them, each
through a temporary file renamed into place, so a symlink planted in the output folder is
replaced, never written through.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from aslquant import __version__
from aslquant.errors import InputError
from aslquant.present import figures, tables
from aslquant.present.document import (
    Block,
    Bullets,
    Cards,
    CodeBlock,
    Figure,
    Heading,
    Mono,
    Strong,
    paragraph,
    section,
    to_html,
    to_markdown,
)
from aslquant.run import RunResult

#: The files a report folder holds, by the key the text functions return them under.
REPORT_FILES = {"json": "report.json", "md": "report.md", "html": "report.html"}


def json_safe(value: Any) -> Any:
    """JSON-safe: typed rows become dicts, NaN/Inf None (JSON has no NaN), numpy scalars Python."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_summary(result: RunResult) -> dict:
    """The headline figures of a run, under their report.json keys (latency ratios None while
    timing is pending). The run history and the summary cards are built from this."""
    return json_safe(
        {
            "run_key": result.key,
            "recipe": result.config.recipe.describe(),
            "fp32": result.fp32.to_dict(),
            "int8": result.int8.to_dict(),
            "size_ratio": result.size_ratio,
            "latency_ratio_b1": result.speedup(1),
            "latency_ratio_b32": result.speedup(32),
            "accuracy_drop_points": result.accuracy_drop_points,
            "agreement": result.agreement,
            "n_eval": result.n_eval,
            "n_calib": result.n_calib,
            "threads": result.threads,
            "uncertainty": result.uncertainty.to_dict(),
            "latency_reliable": {
                "fp32": result.fp32.latency_reliable,
                "int8": result.int8.latency_reliable,
            },
        }
    )


def report_dict(
    result: RunResult, sections: Mapping[str, Any] | None = None, notes: list[str] | None = None
) -> dict:
    """The report.json content (schema in README: config, fp32, int8, agreement, ...).

    ``sections``: analysis results keyed by their report.json name (layers, onnx, sensitivity,
    bit_sweep, ...); ``notes``: extra notes (skipped analyses, export notes).
    """
    sections = dict(sections or {})
    report = {
        "aslquant_version": __version__,
        "config": result.config.to_dict(),
        "command": result.config.cli_command(),
        "class_names": result.class_names,
        **run_summary(result),
        "per_class": result.per_class(),
        "per_class_drops": [row.to_dict() for row in result.per_class_drops()],
        "confusion": {
            "fp32": result.confusion_fp32.tolist(),
            "int8": result.confusion_int8.tolist(),
        },
        "flipped": [
            {k: row[k] for k in ("path", "true", "fp32", "int8", "fp32_top3", "int8_top3")}
            for row in result.flipped()
        ],
        "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
        "notes": [*result.notes, *(notes or [])],
        "qat_history": list(result.qat_history),
        "timings_s": dict(result.timings_s),
        "layers": sections.pop("layers", []),
        "onnx": sections.pop("onnx", None),
    }
    report.update(sections)
    return json_safe(report)


def sweep_report(config, command: str, grid: Mapping[str, list], rows: list) -> dict:
    """The report.json content of a configuration sweep."""
    return json_safe(
        {
            "aslquant_version": __version__,
            "config": config.to_dict(),
            "command": command,
            "grid": dict(grid),
            "sweep": rows,
        }
    )


# --- the reports as blocks ---------------------------------------------------------------------


def _reproduce(command: str) -> list[Block]:
    return [paragraph("Reproduce with:"), CodeBlock(command)]


#: Analysis sections in reading order: report.json key, table builder, and the figure drawn
#: above the table in report.html (div id, builder), if any.
_SECTIONS: tuple[tuple[str, Callable, tuple[str, Callable] | None], ...] = (
    ("layers", tables.layer_error_table, ("sqnr", figures.sqnr_bars)),
    ("sensitivity", tables.sensitivity_table, ("sensitivity", figures.sensitivity_figure)),
    ("mixed_precision", tables.mixed_precision_table, None),
    ("bit_sweep", tables.bit_sweep_table, ("bits", figures.bit_sweep_figure)),
    ("sweep", tables.config_sweep_table, ("pareto", figures.pareto_figure)),
    ("qat_vs_ptq", tables.qat_table, None),
    ("parity", tables.parity_table, None),
    ("seed_spread", tables.seed_spread_table, None),
    (
        "calibration_study",
        tables.calibration_study_table,
        ("calibration", figures.calibration_study_figure),
    ),
    ("robustness", tables.robustness_table, ("robustness", figures.robustness_figure)),
    ("margins", tables.margins_table, ("margins", figures.margins_figure)),
)


def _analysis_blocks(report: Mapping) -> list[Block]:
    """The sections of whatever analyses the report holds, in reading order."""
    blocks: list[Block] = []
    for key, build_table, figure in _SECTIONS:
        data = report.get(key)
        if not data:
            continue
        above = [Figure(figure[0], partial(figure[1], data))] if figure else []
        blocks += section(build_table(data), *above)
    return blocks


def _profile_blocks(report: Mapping) -> list[Block]:
    profile = report.get("profile")
    if not profile:
        return []
    return [
        *section(tables.breakdown_table(profile["breakdown"])),
        *section(tables.threads_batch_table(profile["threads_batch"])),
        Heading("Why the quantized model is faster or slower here"),
        Bullets(tuple(profile.get("explanation", []))),
    ]


def _confusion_blocks(report: Mapping) -> list[Block]:
    names = report.get("class_names") or []
    conf = report.get("confusion") or {}
    if not (names and conf.get("fp32") and conf.get("int8")):
        return []
    fp32, int8 = conf["fp32"], conf["int8"]
    return [
        Heading("Confusion matrices"),
        paragraph(
            "report.json holds both (rows: true class, columns: predicted class).", muted=True
        ),
        Figure("conf_fp32", lambda: figures.confusion_figure(fp32, names, "FP32")),
        Figure("conf_int8", lambda: figures.confusion_figure(int8, names, "Quantized")),
        Figure("conf_d", lambda: figures.confusion_diff_figure(fp32, int8, names)),
    ]


def run_report_blocks(report: Mapping) -> list[Block]:
    """report.md and report.html of one run, as blocks, from its report dict alone."""
    blocks: list[Block] = [
        Heading("aslquant report", 1),
        paragraph("Recipe: ", Strong(report["recipe"])),
        paragraph(
            f"Evaluated on {report['n_eval']} images, calibrated on {report['n_calib']}, "
            f"{report['threads']} threads; run key ",
            Mono(report["run_key"]),
            f", aslquant {report.get('aslquant_version')}.",
            muted=True,
        ),
        Cards(tables.summary_cards(report)),
        *_reproduce(report["command"]),
        *section(tables.summary_table(report)),
    ]
    if report.get("gates"):
        blocks += [
            Heading("Gates"),
            Bullets(tuple(f"{g['name']}: {g['reason']}" for g in report["gates"])),
        ]
    if report.get("onnx"):
        blocks += section(tables.onnx_table(report["onnx"]))
    blocks += _analysis_blocks(report)
    blocks += _profile_blocks(report)
    blocks += _confusion_blocks(report)
    if report.get("per_class_drops"):
        blocks += section(tables.per_class_table(report["per_class_drops"]))
    flipped = tables.flipped_table(report.get("flipped") or [])
    if flipped.rows:
        blocks += section(flipped)
    else:
        blocks += [
            Heading(flipped.title),
            paragraph("None: both models give the same top-1 on every evaluation image."),
        ]
    if report.get("skipped"):
        blocks += section(tables.skipped_table(report["skipped"]))
    if report.get("notes"):
        blocks += [Heading("Notes"), Bullets(tuple(report["notes"]))]
    return blocks


def sweep_report_blocks(report: Mapping) -> list[Block]:
    """report.md and report.html of a sweep: its best configurations, Pareto plot and table."""
    return [
        Heading("aslquant configuration sweep", 1),
        Cards(tables.sweep_cards(report["sweep"])),
        *_reproduce(report["command"]),
        *_analysis_blocks({"sweep": report["sweep"]}),
    ]


def report_markdown(report: Mapping) -> str:
    """report.md of one run (from a report dict, or a loaded report.json)."""
    return to_markdown(run_report_blocks(report))


def report_html(report: Mapping) -> str:
    """report.html of one run: one offline page with plotly.js and every figure inlined."""
    return to_html(run_report_blocks(report), f"aslquant report {report['run_key']}")


def sweep_markdown(report: Mapping) -> str:
    return to_markdown(sweep_report_blocks(report))


def sweep_html(report: Mapping) -> str:
    return to_html(sweep_report_blocks(report), "aslquant sweep")


def report_json(report: Mapping) -> str:
    return json.dumps(report, indent=2, allow_nan=False)


def run_report_texts(report: Mapping) -> dict[str, str]:
    """report.json, report.md and report.html of one run as text, keyed like REPORT_FILES."""
    return {"json": report_json(report), "md": report_markdown(report), "html": report_html(report)}


def sweep_report_texts(report: Mapping) -> dict[str, str]:
    """report.json, report.md and report.html of a sweep as text, keyed like REPORT_FILES."""
    return {"json": report_json(report), "md": sweep_markdown(report), "html": sweep_html(report)}


# --- writing -----------------------------------------------------------------------------------


def prepare_out_dir(out: str | Path) -> Path:
    """Create ``out`` (and parents) and check it is writable, before any long work starts."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".aslquant-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{out}: output folder is not writable ({err.strerror or err})") from None
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed over it.

    ``os.replace`` swaps the directory entry: an existing file *or symlink* at ``path`` is
    replaced, and whatever a symlink pointed to is left untouched.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report_texts(texts: Mapping[str, str], out: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``out``: the one place they are
    written."""
    path = prepare_out_dir(out)
    return {
        kind: write_text_atomic(path / name, texts[kind]) for kind, name in REPORT_FILES.items()
    }


def write_run_reports(report: Mapping, out: str | Path) -> dict[str, Path]:
    """Write the three report files of one run into ``out``."""
    return write_report_texts(run_report_texts(report), out)


def write_sweep_reports(report: Mapping, out: str | Path) -> dict[str, Path]:
    """Write the three report files of a sweep into ``out``."""
    return write_report_texts(sweep_report_texts(report), out)


# --- the doctor --------------------------------------------------------------------------------


def doctor_report(result) -> dict:
    """The report.json content of ``python -m aslquant doctor`` (aslquant.doctor.DoctorReport)."""
    return json_safe(
        {
            "aslquant_version": __version__,
            "config": result.config.to_dict(),
            "command": result.config.cli_command("doctor"),
            "doctor": result.to_dict(),
        }
    )


def _spread(trial: Mapping) -> str:
    s = trial["seed_spread"]
    return f"{s['min']:.2f}..{s['max']:.2f}"


def doctor_findings_table(doctor: Mapping) -> tables.Table:
    """Findings ranked by impact, each with its best remedy and that remedy's seed spread."""
    rows = []
    for row in doctor["ranked"]:
        best = row["remedies"][0] if row["remedies"] else None
        rows.append(
            (
                str(row["rank"]),
                row["finding"]["title"],
                f"{row['impact_points']:.2f}",
                best["remedy"]["name"] if best else "-",
                f"{best['recovery_points']:.2f}" if best else "-",
                _spread(best["trial"]) if best else "-",
                ", ".join(best["within_spread_of"]) if best else "-",
            )
        )
    return tables.Table(
        "Findings, ranked",
        (
            "rank",
            "finding",
            "impact (points)",
            "best remedy",
            "won back (points)",
            "drop over seeds (points)",
            "within the spread of",
        ),  # fmt: skip
        tuple(rows),
        notes=(
            f"Measured on {doctor['n_selection']} selection images with {doctor['seeds']} "
            "calibration seeds; remedies whose seed spreads overlap are not ranked apart.",
        ),
        numeric=frozenset({"impact (points)", "won back (points)"}),
    )


def doctor_steps_table(prescription: Mapping) -> tables.Table:
    return tables.Table(
        "Meet my budget: the steps",
        ("step", "recipe", "drop on selection, mean (points)", "seed spread (points)"),
        tuple(
            (
                s["step"],
                s["trial"]["describe"],
                f"{s['trial']['drop_mean']:.2f}",
                _spread(s["trial"]),
            )
            for s in prescription["steps"]
        ),
        numeric=frozenset({"drop on selection, mean (points)"}),
    )


def doctor_report_blocks(report: Mapping) -> list[Block]:
    """report.md and report.html of the doctor, from its report dict alone."""
    from aslquant.present import doctor_figures

    d = report["doctor"]
    blocks: list[Block] = [
        Heading("aslquant doctor", 1),
        paragraph(
            f"{d['n_selection']} selection and {d['n_held_out']} held-out images, {d['seeds']} "
            f"calibration seeds, {d['seconds']:.0f} s.",
            muted=True,
        ),
        *_reproduce(report["command"]),
    ]
    if d["checks"]:
        blocks += [
            Heading("Setup checks"),
            Bullets(tuple(f"{c['title']}: {c['detail']}" for c in d["checks"])),
        ]
    if d["points"]:
        blocks.append(Figure("points", partial(doctor_figures.point_effects_figure, d["points"])))
    blocks += section(doctor_findings_table(d))
    p = d.get("prescription")
    if p:
        verdict = "reached" if p["reached"] else "not reached"
        blocks += [
            Heading("Prescription"),
            paragraph(
                f"Target drop <= {p['target_drop']:.2f} points: ",
                Strong(verdict),
                f" with {p['describe']}. {p['note']}.",
            ),
            Figure("prescription", partial(doctor_figures.prescription_figure, p)),
            *section(doctor_steps_table(p)),
            paragraph("Replay:"),
            CodeBlock(p["command"]),
        ]
    return blocks


def doctor_report_texts(report: Mapping) -> dict[str, str]:
    """The doctor's report.json, report.md and report.html as text, keyed like REPORT_FILES."""
    blocks = doctor_report_blocks(report)
    return {
        "json": report_json(report),
        "md": to_markdown(blocks),
        "html": to_html(blocks, "aslquant doctor"),
    }


def write_doctor_reports(report: Mapping, out: str | Path) -> dict[str, Path]:
    return write_report_texts(doctor_report_texts(report), out)
