"""RunResult -> report.json, report.md and report.html (the CLI's and the dashboard's output).

The JSON keys are a contract: tests and CI gates read them. The Markdown and HTML are for
people. ``report_dict`` builds the content once from a run and its analysis sections (new values
computed beside the run; the run itself is never changed); each file is written by one function,
through a temporary file renamed into place, so a symlink planted in the output folder is
replaced, never written through.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aslquant import __version__
from aslquant.errors import InputError
from aslquant.run import RunResult


def _clean(value):
    """JSON-safe: NaN/Inf become None (JSON has no NaN), numpy scalars become Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(fp32: Mapping | None, quant: Mapping | None, key: str) -> float | None:
    if not fp32 or not quant or not quant.get(key):
        return None
    return fp32[key] / quant[key]


def report_dict(
    result: RunResult, sections: Mapping[str, Any] | None = None, notes: list[str] | None = None
) -> dict:
    """The report.json content (schema in README: config, fp32, int8, agreement, ...).

    ``sections``: analysis results keyed by their report.json name (layers, onnx, sensitivity,
    bit_sweep, ...); ``notes``: extra notes (skipped analyses, export notes).
    """
    sections = dict(sections or {})
    f_lat, q_lat = result.fp32.latency_ms, result.int8.latency_ms
    report = {
        "aslquant_version": __version__,
        "run_key": result.key,
        "config": result.config.to_dict(),
        "command": result.config.cli_command(),
        "recipe": result.config.recipe.describe(),
        "class_names": result.class_names,
        "fp32": result.fp32.to_dict(),
        "int8": result.int8.to_dict(),
        "size_ratio": result.fp32.size_bytes / max(1, result.int8.size_bytes),
        "latency_ratio_b1": _ratio(f_lat, q_lat, "b1_p50"),
        "latency_ratio_b32": _ratio(f_lat, q_lat, "b32_p50"),
        "accuracy_drop_points": result.accuracy_drop_points,
        "agreement": result.agreement,
        "n_eval": result.n_eval,
        "n_calib": result.n_calib,
        "threads": result.threads,
        "uncertainty": result.uncertainty.to_dict(),
        "per_class": result.per_class(),
        "per_class_drops": [row.to_dict() for row in result.per_class_drops()],
        "latency_reliable": {
            "fp32": result.fp32.latency_reliable,
            "int8": result.int8.latency_reliable,
        },
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
    return _clean(report)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f} MB"


def report_markdown(report: dict) -> str:
    """Human-readable tables of a report dict (works from a loaded report.json too)."""
    f, q = report["fp32"], report["int8"]
    lines = [
        "# aslquant report",
        "",
        f"Recipe: **{report['recipe']}**  ",
        f"Evaluated on {report['n_eval']} images, calibrated on {report['n_calib']}, "
        f"{report['threads']} threads. Run key `{report['run_key']}`.",
        "",
        "Reproduce with:",
        "",
        f"    {report['command']}",
        "",
        "| | FP32 | quantized | ratio |",
        "|---|---|---|---|",
        f"| top-1 accuracy | {_pct(f['accuracy'])} | {_pct(q['accuracy'])} | "
        f"drop {report['accuracy_drop_points']:.2f} points |",
        f"| top-5 accuracy | {_pct(f['top5'])} | {_pct(q['top5'])} | |",
        f"| size (state_dict) | {_mb(f['size_bytes'])} | {_mb(q['size_bytes'])} | "
        f"{report['size_ratio']:.2f}x smaller |",
        f"| size (TorchScript) | {_mb(f['torchscript_bytes'])} | {_mb(q['torchscript_bytes'])} | |",
    ]
    for b in ("b1", "b32"):
        lines.append(
            f"| latency batch {b[1:]} p50 / p95 (ms) | {_ms(f['latency_ms'][f'{b}_p50'])} / "
            f"{_ms(f['latency_ms'][f'{b}_p95'])} | {_ms(q['latency_ms'][f'{b}_p50'])} / "
            f"{_ms(q['latency_ms'][f'{b}_p95'])} | {report[f'latency_ratio_{b}']:.2f}x faster |"
        )
    lines += ["", f"Top-1 agreement FP32 vs quantized: **{_pct(report['agreement'])}**", ""]
    if report.get("layers"):
        lines += [
            "## Per-layer error",
            "",
            "| layer | weight SQNR (dB) | activation SQNR (dB) |",
            "|---|---|---|",
        ]
        for row in report["layers"]:
            w, a = row.get("weight_sqnr_db"), row.get("activation_sqnr_db")
            lines.append(
                f"| {row['name']} | {'n/a' if w is None else f'{w:.1f}'} | "
                f"{'n/a' if a is None else f'{a:.1f}'} |"
            )
        lines.append("")
    if report.get("onnx"):
        lines += [
            "## ONNX Runtime",
            "",
            "| model | accuracy | latency b1 p50 (ms) |",
            "|---|---|---|",
        ]
        for name, row in report["onnx"].items():
            if isinstance(row, dict) and "accuracy" in row:
                lines.append(
                    f"| {name} | {_pct(row['accuracy'])} | {_ms(row['latency_ms'].get('b1_p50'))} |"
                )
        lines.append("")
    lines += ["## Per-class accuracy", "", "| class | n | FP32 | quantized |", "|---|---|---|---|"]
    for row in report["per_class"]:
        lines.append(f"| {row['class']} | {row['n']} | {_pct(row['fp32'])} | {_pct(row['int8'])} |")
    lines += ["", f"## Images whose prediction changed ({len(report['flipped'])})", ""]
    if report["flipped"]:
        lines += ["| image | true | FP32 | quantized |", "|---|---|---|---|"]
        for row in report["flipped"]:
            lines.append(f"| {row['path']} | {row['true']} | {row['fp32']} | {row['int8']} |")
    else:
        lines.append("None: both models give the same top-1 on every evaluation image.")
    if report.get("skipped"):
        lines += ["", f"{len(report['skipped'])} files skipped (not readable images):", ""]
        lines += [f"- {row['path']}: {row['reason']}" for row in report["skipped"][:50]]
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


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


def render_run_reports(report: dict) -> dict[str, str]:
    """report.json, report.md and report.html of one run, as text (rendered from the dict
    alone, so a loaded report.json renders the same)."""
    from aslquant.report_html import analysis_markdown, report_html

    markdown = report_markdown(report)
    extra = analysis_markdown(report)
    if extra:
        markdown += "\n" + extra
    return {
        "json": json.dumps(report, indent=2),
        "md": markdown,
        "html": report_html(report),
    }


def write_run_reports(report: dict, out: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html of one run into ``out``."""
    path = prepare_out_dir(out)
    texts = render_run_reports(report)
    return {
        kind: write_text_atomic(path / f"report.{kind}", text) for kind, text in texts.items()
    }


def sweep_report(config, command: str, grid: Mapping[str, list], rows: list[dict]) -> dict:
    """The report.json content of a configuration sweep."""
    return _clean(
        {
            "aslquant_version": __version__,
            "config": config.to_dict(),
            "command": command,
            "grid": dict(grid),
            "sweep": rows,
        }
    )


def write_sweep_reports(report: dict, out: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html of a sweep into ``out``."""
    from aslquant.report_html import sweep_html, sweep_markdown

    path = prepare_out_dir(out)
    return {
        "json": write_text_atomic(path / "report.json", json.dumps(report, indent=2)),
        "md": write_text_atomic(path / "report.md", sweep_markdown(report["sweep"], report["command"])),
        "html": write_text_atomic(
            path / "report.html", sweep_html(report["sweep"], report["command"])
        ),
    }


def doctor_report(result) -> dict:
    """The report.json content of ``python -m aslquant doctor`` (aslquant.doctor.DoctorReport)."""
    return _clean(
        {
            "aslquant_version": __version__,
            "config": result.config.to_dict(),
            "command": result.config.cli_command("doctor"),
            "doctor": result.to_dict(),
        }
    )


def doctor_markdown(report: dict) -> str:
    """report.md of the doctor: ranked findings, remedies with their seed spread, prescription."""
    d = report["doctor"]
    lines = [
        "# aslquant doctor",
        "",
        f"{d['n_selection']} selection and {d['n_held_out']} held-out images, {d['seeds']} "
        f"calibration seeds, {d['seconds']:.0f} s. Reproduce with:",
        "",
        f"    {report['command']}",
        "",
        "## Findings, ranked",
        "",
        "| rank | finding | impact (points) | best remedy | recovery (points) | seed spread |",
        "|---|---|---|---|---|---|",
    ]
    for row in d["ranked"]:
        best = row["remedies"][0] if row["remedies"] else None
        spread = best["trial"]["seed_spread"] if best else None
        lines.append(
            f"| {row['rank']} | {_md(row['finding']['title'])} | {row['impact_points']:.2f} | "
            f"{_md(best['remedy']['name']) if best else '-'} | "
            f"{best['recovery_points']:.2f} | "
            + (f"{spread['min']:.2f}..{spread['max']:.2f}" if spread else "-")
            + " |"
        )
    p = d.get("prescription")
    if p:
        lines += [
            "",
            "## Prescription",
            "",
            f"Target: drop <= {p['target_drop']:.2f} points: "
            f"**{'reached' if p['reached'] else 'not reached'}** with {_md(p['describe'])}.",
            "",
            p["note"] + ".",
            "",
            "Replay:",
            "",
            f"    {p['command']}",
        ]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Text for a Markdown table cell: HTML and table syntax escaped."""
    import html

    return html.escape(str(text)).replace("|", "\\|")


def write_doctor_reports(report: dict, out: str | Path) -> dict[str, Path]:
    """Write the doctor's report.json and report.md into ``out``."""
    path = prepare_out_dir(out)
    return {
        "json": write_text_atomic(path / "report.json", json.dumps(report, indent=2)),
        "md": write_text_atomic(path / "report.md", doctor_markdown(report)),
    }
