"""Ship check: one verdict per gate, each with its evidence, before a model goes out."""

from __future__ import annotations

import streamlit as st

from aslquant.parity import runtime_gate
from aslquant.present import figures, tables
from aslquant.present import format as fmt
from aslquant.present.markup import md_text
from aslquant.report import json_safe, report_dict, run_report_texts
from aslquant.robustness import robust_gap_gate
from aslquant.ui import cache, widgets

st.title("Ship check")
st.caption(
    "Numbers you can ship on: every verdict below comes with its uncertainty. The drop is judged "
    "against the interval over the test images and the spread over calibration draws; the "
    "robustness gap on images degraded like a webcam's; the shipped files against the model "
    "validated here; and the latency against how busy the machine was while it was measured."
)

_VERDICT = {
    "pass": st.success,
    "pass within uncertainty": st.warning,
    "fail within uncertainty": st.warning,
    "fail beyond uncertainty": st.error,
}


def _verdict(name: str, verdict) -> dict:
    _VERDICT[verdict.outcome](f"**{name}: {verdict.outcome}** — {md_text(verdict.reason)}")
    return {"name": name, **verdict.to_dict()}


with widgets.guard("the Ship check page"):
    entry = widgets.require_run()
    if entry is not None:
        entry = widgets.run_picker(st, "Run to check", key="ship_run")
        result = entry.result
        st.caption(f"Recipe: {md_text(result.config.recipe.describe())}")
        c = st.columns(4)
        max_drop = c[0].number_input("Largest drop (points)", 0.0, 100.0, 1.0, 0.1, key="ship_drop")
        max_gap = c[1].number_input(
            "Largest robustness gap (points)", 0.0, 100.0, 2.0, 0.5, key="ship_gap"
        )
        max_dis = c[2].number_input(
            "Largest runtime disagreement (%)", 0.0, 100.0, 1.0, 0.5, key="ship_dis"
        )
        seeds = c[3].number_input("Calibration seeds", 3, 10, 3, key="ship_seeds")
        evidence = widgets.on_request(
            f"ship_{entry.key}_{seeds}",
            "Re-runs the recipe with other calibration draws, measures both models on 24 "
            "corrupted copies of the test images, and runs every exported file on the same "
            "images (two to three minutes).",
            "Run the ship check",
            "ship_go",
            "Ship check",
            lambda: cache.ship_check(result, int(seeds)),
        )
        if evidence is not None:
            spread = evidence["seed_spread"]
            st.subheader("Verdicts")
            gates = [
                _verdict("Accuracy drop", result.drop_gate(max_drop, spread.drop)),
                _verdict("Robustness gap", robust_gap_gate(evidence["robustness"], max_gap)),
                _verdict("Runtime parity", runtime_gate(evidence["parity"], max_dis)),
            ]
            unreliable = [
                f"{name} {batch}"
                for name, metrics in (("FP32", result.fp32), ("quantized", result.int8))
                for batch, v in (metrics.latency_reliability or {}).items()
                if not v.reliable
            ]
            if not result.timed:
                st.info("Latency: still being timed.")
            elif unreliable:
                st.warning(
                    "**Latency: do not trust it** — measured while the machine was busy ("
                    + ", ".join(unreliable)
                    + "). Close other programs and re-run before quoting a speed-up."
                )
            else:
                st.success(
                    f"**Latency: reliable** — {fmt.speedup(result.speedup(1))} than torch FP32 at "
                    "batch 1; spread and machine load within limits."
                )
            u = result.uncertainty
            st.caption(
                f"Drop {fmt.interval(u.drop, kind='points')} over the {result.n_eval} test images; "
                f"{md_text(spread.summary)}. {md_text(u.mcnemar.verdict)}"
            )

            st.subheader("Calibration luck")
            st.dataframe(
                tables.seed_spread_table(spread.to_dict()).to_frame(),
                hide_index=True,
                width="stretch",
            )
            study = widgets.on_request(
                f"calib_study_{entry.key}",
                "Accuracy as a function of the calibration-set size (8, 32, 128, 512 images) x 3 "
                "seeds: how many images are enough for this model (about two minutes).",
                "Run the calibration study",
                "calib_study_go",
                "Calibration study",
                lambda: cache.calibration_study(result),
            )
            if study is not None:
                data = study.to_dict()
                widgets.plot(figures.calibration_study_figure(data), key="calib_study")
                st.caption(md_text(data["reading"]))

            st.subheader("Robustness: images like the webcam's")
            robust = evidence["robustness"].to_dict()
            widgets.plot(figures.robustness_figure(robust), key="robustness")
            st.dataframe(
                tables.robustness_table(robust).to_frame(), hide_index=True, width="stretch"
            )

            st.subheader("Where the flips happen")
            margins = evidence["margins"].to_dict()
            widgets.plot(figures.margins_figure(margins), key="margins")
            st.caption(md_text(margins["headline"]) + ".")

            st.subheader("Runtime parity: the files you ship")
            parity_table = tables.parity_table(evidence["parity"].to_dict())
            st.dataframe(parity_table.to_frame(), hide_index=True, width="stretch")
            for note in parity_table.notes:
                st.caption(md_text(note))
            st.dataframe(evidence["parity"].matrix().round(2), width="stretch")

            sections = {
                "seed_spread": spread,
                "robustness": evidence["robustness"],
                "parity": evidence["parity"],
                "margins": evidence["margins"],
                "gates": gates,
                "study": study,
            }
            if study is None:
                sections.pop("study")
            else:
                sections["calibration_study"] = sections.pop("study")
            report = report_dict(result, json_safe(sections))
            texts = run_report_texts(report)
            d = st.columns(3)
            d[0].download_button("⬇ report.json", texts["json"], "report.json", "application/json",
                                 key="ship_json", width="stretch")  # fmt: skip
            d[1].download_button("⬇ report.md", texts["md"], "report.md", "text/markdown",
                                 key="ship_md", width="stretch")  # fmt: skip
            d[2].download_button("⬇ report.html", texts["html"], "report.html", "text/html",
                                 key="ship_html", width="stretch")  # fmt: skip
            st.caption(
                "The same gates on the command line: "
                + md_text(
                    f"--fail-if-drop {max_drop:g} --seeds {int(seeds)} --max-robust-gap "
                    f"{max_gap:g} --max-runtime-disagreement {max_dis:g}"
                )
                + " (exit code 3 when one fails)."
            )
