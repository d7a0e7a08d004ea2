"""report.html: one self-contained, offline file a stakeholder can open from an email.

plotly.js is inlined once in the page's head (no CDN, no network); every figure is a ``div``
drawn from the same builders the dashboard uses. Also here: Markdown for the analysis sections
(sensitivity, bit sweep, mixed precision, config sweep) appended after report.md's tables.
"""

from __future__ import annotations

import html
import math

from plotly.offline import get_plotlyjs

from aslquant.present import figures


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def _ms(value) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"


def _db(value) -> str:
    return "n/a" if value is None else f"{float(value):.1f}"


def _mb(value) -> str:
    return "n/a" if value is None else f"{float(value) / 1e6:.3f} MB"


def _esc(value) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig, div_id: str) -> str:
    # plotly.js is already in <head>: each figure only adds its div and a small script.
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def _card(title: str, value: str, sub: str = "") -> str:
    return (
        f'<div class="card"><div class="t">{_esc(title)}</div>'
        f'<div class="v">{_esc(value)}</div><div class="s">{_esc(sub)}</div></div>'
    )


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


def report_html(report: dict) -> str:
    """The whole report as one HTML page with plotly.js and every figure inlined."""
    f, q = report["fp32"], report["int8"]
    parts: list[str] = []
    add = parts.append
    add("<h1>aslquant report</h1>")
    add(f"<p><b>{_esc(report['recipe'])}</b></p>")
    add(
        f"<p class='muted'>Evaluated on {report['n_eval']} images, calibrated on "
        f"{report['n_calib']}, {report['threads']} threads, run key "
        f"<code>{_esc(report['run_key'])}</code>, aslquant {_esc(report.get('aslquant_version'))}"
        "</p>"
    )
    add("<div class='cards'>")
    add(_card("top-1 FP32", _pct(f["accuracy"])))
    add(
        _card(
            "top-1 quantized",
            _pct(q["accuracy"]),
            f"drop {report['accuracy_drop_points']:.2f} points",
        )
    )
    add(_card("agreement", _pct(report["agreement"]), "same top-1 as FP32"))
    add(
        _card(
            "size",
            f"{report['size_ratio']:.2f}x smaller",
            f"{_mb(f['size_bytes'])} -> {_mb(q['size_bytes'])}",
        )
    )
    add(
        _card(
            "latency batch 1",
            f"{report['latency_ratio_b1']:.2f}x faster",
            f"{_ms(f['latency_ms']['b1_p50'])} -> {_ms(q['latency_ms']['b1_p50'])} ms p50",
        )
    )
    add("</div>")
    add("<h2>Summary</h2>")
    rows = [
        ["top-1 accuracy", _pct(f["accuracy"]), _pct(q["accuracy"])],
        ["top-5 accuracy", _pct(f["top5"]), _pct(q["top5"])],
        ["size (state_dict)", _mb(f["size_bytes"]), _mb(q["size_bytes"])],
        ["size (TorchScript)", _mb(f.get("torchscript_bytes")), _mb(q.get("torchscript_bytes"))],
    ]
    for b in ("b1", "b32"):
        rows.append(
            [
                f"latency batch {b[1:]} p50 / p95 (ms)",
                f"{_ms(f['latency_ms'][f'{b}_p50'])} / {_ms(f['latency_ms'][f'{b}_p95'])}",
                f"{_ms(q['latency_ms'][f'{b}_p50'])} / {_ms(q['latency_ms'][f'{b}_p95'])}",
            ]
        )
    add(_table(["", "FP32 (torch)", "quantized (torch)"], rows))
    add(f"<p>Reproduce with:</p><pre>{_esc(report['command'])}</pre>")

    onnx = report.get("onnx")
    if onnx:
        add("<h2>ONNX Runtime</h2>")
        add(f"<p class='muted'>{_esc(onnx.get('runtime', ''))}, measured in the same run.</p>")
        orows = []
        for key in ("fp32", "int8"):
            row = onnx.get(key)
            if not isinstance(row, dict):
                continue
            lat = row.get("latency_ms", {})
            orows.append(
                [
                    f"ONNX {key}",
                    _pct(row.get("accuracy")),
                    _pct(row.get("agreement_with_torch")),
                    _mb(row.get("size_bytes")),
                    f"{_ms(lat.get('b1_p50'))} / {_ms(lat.get('b1_p95'))}",
                    f"{_ms(lat.get('b32_p50'))} / {_ms(lat.get('b32_p95'))}",
                ]
            )
        add(
            _table(
                [
                    "model",
                    "top-1",
                    "agreement with torch",
                    "file size",
                    "b1 p50 / p95 (ms)",
                    "b32 p50 / p95 (ms)",
                ],
                orows,
            )
        )

    layers = report.get("layers") or []
    if layers:
        add("<h2>Per-layer error</h2>")
        add(
            "<p class='muted'>Cumulative: the quantized model fed the image (earlier layers' "
            "error included). Isolated: the layer fed the FP32 input, so only its own error."
            "</p>"
        )
        add(_figure(figures.sqnr_bars(layers), "sqnr"))
        add(
            _table(
                [
                    "layer",
                    "weight SQNR (dB)",
                    "weight MSE",
                    "act. SQNR cumulative (dB)",
                    "act. SQNR isolated (dB)",
                    "act. range (FP32)",
                    "scale / zero point",
                ],
                [
                    [
                        r["name"] + ("" if r.get("quantized", True) else " (float)"),
                        _db(r.get("weight_sqnr_db")),
                        _mse(r),
                        _db(r.get("activation_sqnr_db")),
                        _db(r.get("activation_sqnr_isolated_db")),
                        _act_range(r),
                        _act_qparams(r),
                    ]
                    for r in layers
                ],
            )
        )

    sens = report.get("sensitivity")
    if sens:
        add("<h2>Sensitivity: one layer kept in FP32</h2>")
        add(_figure(figures.sensitivity_figure(sens), "sensitivity"))
        add(_table(*_sensitivity_table(sens)))
    mixed = report.get("mixed_precision")
    if mixed:
        add("<h2>Mixed precision search</h2>")
        verdict = "reached" if mixed["reached"] else "not reached"
        add(
            f"<p>Target drop {mixed['target_drop_points']:.2f} points: {verdict} keeping "
            f"<b>{_esc(', '.join(mixed['keep_fp32']) or 'no layer')}</b> in FP32.</p>"
        )
        add(_table(*_mixed_table(mixed)))
    bits = report.get("bit_sweep")
    if bits:
        add("<h2>Bit-width sweep (simulated)</h2>")
        add(
            "<p class='muted'>Fake quantization in float: what N-bit weights and activations "
            "would do, not measured INT8 kernels.</p>"
        )
        add(_figure(figures.bit_sweep_figure(bits), "bits"))
        add(_table(*_bit_sweep_table(bits)))
    sweep = report.get("sweep")
    if sweep:
        add("<h2>Configuration sweep</h2>")
        add(_figure(figures.pareto_figure(sweep), "pareto"))
        add(_table(*_sweep_table(sweep)))
    qat = report.get("qat_vs_ptq")
    if qat:
        add("<h2>QAT vs post-training static</h2>")
        add(_table(*_qat_table(qat)))

    names = report.get("class_names") or []
    conf = report.get("confusion") or {}
    if names and conf.get("fp32") and conf.get("int8"):
        add("<h2>Confusion matrices</h2>")
        add(_figure(figures.confusion_figure(conf["fp32"], names, "FP32"), "conf_fp32"))
        add(_figure(figures.confusion_figure(conf["int8"], names, "Quantized"), "conf_int8"))
        add(_figure(figures.confusion_diff_figure(conf["fp32"], conf["int8"], names), "conf_d"))
    per_class = report.get("per_class") or []
    if per_class:
        add("<h2>Per-class accuracy</h2>")
        add(
            _table(
                ["class", "images", "FP32", "quantized"],
                [[r["class"], r["n"], _pct(r["fp32"]), _pct(r["int8"])] for r in per_class],
            )
        )
    flipped = report.get("flipped") or []
    add(f"<h2>Images whose prediction changed ({len(flipped)})</h2>")
    if flipped:
        add(
            _table(
                ["image", "true", "FP32", "quantized"],
                [[r["path"], r["true"], r["fp32"], r["int8"]] for r in flipped[:500]],
            )
        )
    if report.get("notes"):
        add("<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in report["notes"]))
        add("</ul>")
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>aslquant report {_esc(report['run_key'])}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def _sweep_table(sweep: list[dict]) -> tuple[list[str], list[list]]:
    headers = ["config", "top-1", "b1 p50 (ms)", "b32 p50 (ms)", "size", "note"]
    rows = [
        [
            r.get("label", ""),
            _pct(r.get("accuracy")),
            _ms(r.get("b1_p50")),
            _ms(r.get("b32_p50")),
            _mb(r.get("size_bytes")),
            r.get("error") or "",
        ]
        for r in sweep
    ]
    return headers, rows


def _sensitivity_table(sens: list[dict]) -> tuple[list[str], list[list]]:
    headers = ["rank", "layer in FP32", "top-1", "agreement", "drop (points)", "gain (points)"]
    rows = [
        [
            r["rank"],
            r["layer"],
            _pct(r["accuracy"]),
            _pct(r["agreement"]),
            f"{r['drop_points']:.2f}",
            f"{r['gain_points']:+.2f}",
        ]
        for r in sens
    ]
    return headers, rows


def _mixed_table(mixed: dict) -> tuple[list[str], list[list]]:
    rows = [
        [
            ", ".join(s["keep_fp32"]) or "(none)",
            _pct(s["accuracy"]),
            _pct(s["agreement"]),
            f"{s['drop_points']:.2f}",
        ]
        for s in mixed["steps"]
    ]
    return ["layers in FP32", "top-1", "agreement", "drop (points)"], rows


def _bit_sweep_table(bits: list[dict]) -> tuple[list[str], list[list]]:
    headers = ["bits", "top-1 (simulated)", "agreement", "weight SQNR (dB)", "output SQNR (dB)"]
    rows = [
        [
            r["bits"],
            _pct(r["accuracy"]),
            _pct(r["agreement"]),
            _db(r.get("weight_sqnr_db")),
            _db(r.get("activation_sqnr_db")),
        ]
        for r in bits
    ]
    return headers, rows


def _mse(layer: dict) -> str:
    return "n/a" if layer.get("weight_mse") is None else f"{layer['weight_mse']:.3g}"


def _act_range(layer: dict) -> str:
    if layer.get("act_min") is None:
        return "n/a"
    return f"{layer['act_min']:.3g} .. {layer['act_max']:.3g}"


def _act_qparams(layer: dict) -> str:
    if layer.get("act_scale") is None:
        return "n/a"
    return f"{layer['act_scale']:.3g} / {layer['act_zero_point']}"


def _qat_table(qat: dict) -> tuple[list[str], list[list]]:
    rows = [["FP32", "", _pct(qat["fp32_accuracy"])]]
    rows.append(["post-training static", "", _pct(qat["ptq"]["accuracy"])])
    for h in qat["qat"]["history"]:
        rows.append([f"QAT epoch {h['epoch']}", f"{h['train_loss']:.4f}", _pct(h.get("accuracy"))])
    return ["model", "train loss", "top-1 (converted INT8)"], rows


def _md_table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def analysis_markdown(report: dict) -> str:
    """Markdown for the sections report.md does not render itself (empty when none)."""
    lines: list[str] = []
    layers = report.get("layers") or []
    if layers and any("activation_sqnr_isolated_db" in r for r in layers):
        lines += ["## Per-layer error, isolated and ranges", ""]
        lines += _md_table(
            ["layer", "act. SQNR isolated (dB)", "weight MSE", "FP32 act. range", "scale / zp"],
            [
                [
                    r["name"],
                    _db(r.get("activation_sqnr_isolated_db")),
                    _mse(r),
                    _act_range(r),
                    _act_qparams(r),
                ]
                for r in layers
            ],
        )
    if report.get("sensitivity"):
        sens = report["sensitivity"]
        lines += [f"## Sensitivity: one layer kept in FP32 ({sens[0]['n_images']} images)", ""]
        lines += _md_table(*_sensitivity_table(sens))
    if report.get("mixed_precision"):
        m = report["mixed_precision"]
        lines += [
            "## Mixed precision search",
            "",
            f"Target drop {m['target_drop_points']:.2f} points: "
            f"{'reached' if m['reached'] else 'not reached'}; FP32 layers: "
            f"{', '.join(m['keep_fp32']) or 'none'}.",
            "",
        ]
        lines += _md_table(*_mixed_table(m))
    if report.get("bit_sweep"):
        rows = report["bit_sweep"]
        lines += [
            f"## Bit-width sweep (simulated with fake quantization, {rows[0]['n_images']} images)",
            "",
        ]
        lines += _md_table(*_bit_sweep_table(rows))
    if report.get("sweep"):
        lines += ["## Configuration sweep", ""]
        lines += _md_table(*_sweep_table(report["sweep"]))
    if report.get("qat_vs_ptq"):
        lines += ["## QAT vs post-training static", ""]
        lines += _md_table(*_qat_table(report["qat_vs_ptq"]))
    return "\n".join(lines)


def sweep_markdown(sweep: list[dict], command: str) -> str:
    """report.md of the ``sweep`` subcommand."""
    lines = ["# aslquant configuration sweep", "", "Reproduce with:", "", f"    {command}", ""]
    return "\n".join(lines) + analysis_markdown({"sweep": sweep}) + "\n"


def sweep_html(sweep: list[dict], command: str) -> str:
    """report.html of the ``sweep`` subcommand: the Pareto plot and its table, offline."""
    best = [r for r in sweep if r.get("accuracy") is not None and not r.get("reference")]
    best.sort(key=lambda r: (-r["accuracy"], r.get("b1_p50") or math.inf))
    cards = "".join(
        _card(r["label"], _pct(r["accuracy"]), f"{_ms(r.get('b1_p50'))} ms b1 p50")
        for r in best[:3]
    )
    body = (
        "<h1>aslquant configuration sweep</h1>"
        f"<div class='cards'>{cards}</div>"
        f"{_figure(figures.pareto_figure(sweep), 'pareto')}"
        f"{_table(*_sweep_table(sweep))}<p>Reproduce with:</p><pre>{_esc(command)}</pre>"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>aslquant sweep</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
