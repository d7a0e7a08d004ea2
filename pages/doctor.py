"""Doctor page: why INT8 loses accuracy here, what fixes it, and proof on held-out images."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from aslquant.present import doctor_figures
from aslquant.report import doctor_report
from aslquant.ui import cache, session, widgets

st.title("Doctor")
st.caption(
    "From \"accuracy dropped\" to a remedy that is proven to work. The doctor splits the test "
    "images into a selection half (where it decides) and a held-out half (where it proves), "
    "re-quantizes with several calibration draws so every figure carries its spread, and ranks "
    "what it finds by what the remedy measurably wins back."
)


def _apply(entry: session.RunEntry, changes: dict) -> None:
    """Run the current recipe with a remedy's changes and open its summary."""
    recipe = entry.result.config.recipe
    if "keep_fp32" in changes:
        changes = {**changes, "keep_fp32": tuple(set(recipe.keep_fp32) | set(changes["keep_fp32"]))}
    config = entry.result.config.with_recipe(**changes)
    session.remember_recipe(config.recipe)
    session.forget_widget("q_keep", "q_act", "q_weight", "q_reduce")
    widgets.quantize_with_progress(config)
    st.switch_page("pages/quantize.py")


with widgets.guard("the Doctor page"):
    entry = widgets.require_run()
    if entry is not None:
        entry = widgets.run_picker(st, "Run to examine", key="doctor_run")
        result = entry.result
        st.caption(f"Recipe: {result.config.recipe.describe()} · {result.n_eval} test images")
        c1, c2, c3 = st.columns(3)
        budget = c1.checkbox("Meet my budget", value=True, key="doc_budget")
        target = c2.number_input(
            "Largest acceptable drop (points)", 0.0, 50.0, 0.5, 0.1, key="doc_target",
            disabled=not budget,
        )  # fmt: skip
        seeds = c3.number_input("Calibration seeds", 3, 10, 3, key="doc_seeds")
        key = f"doctor_{entry.key}_{budget and target}_{seeds}"
        found = widgets.on_request(
            key,
            "Examines the recipe: checks the setup, measures each quantization point, tries "
            "every remedy with each calibration seed, and (with a budget) combines them until "
            "the drop fits, then proves it on held-out images (one to three minutes).",
            "Examine",
            "doctor_go",
            "Doctor",
            lambda: cache.doctor(result, float(target) if budget else None, int(seeds)),
        )
        if found is not None:
            report = doctor_report(found)["doctor"]
            st.caption(
                f"{report['n_selection']} selection and {report['n_held_out']} held-out images, "
                f"{report['seeds']} calibration seeds, {report['seconds']:.0f} s."
            )
            for check in report["checks"]:
                st.warning(f"**{check['title']}** — {check['detail']}")
            if report["points"]:
                widgets.plot(doctor_figures.point_effects_figure(report["points"]), key="doc_pts")
            st.subheader("Findings, ranked by what their best remedy wins back")
            for row in report["ranked"]:
                f = row["finding"]
                with st.expander(
                    f"{row['rank']}. {f['title']} — best remedy wins back "
                    f"{row['best_recovery_points']:.2f} points",
                    expanded=row["rank"] == 1,
                ):
                    st.write(f["detail"])
                    if not row["remedies"]:
                        st.caption("No remedy to try for this finding.")
                        continue
                    widgets.plot(doctor_figures.remedies_figure(row), key=f"doc_rem_{row['rank']}")
                    table = pd.DataFrame(
                        [
                            {
                                "remedy": r["remedy"]["name"],
                                "why": r["remedy"]["why"],
                                "drop, mean of seeds (points)": r["trial"]["drop_mean"],
                                "seed spread": f"{r['trial']['seed_spread']['min']:.2f}.."
                                f"{r['trial']['seed_spread']['max']:.2f}",
                                "won back (points)": r["recovery_points"],
                                "within the spread of": ", ".join(r["within_spread_of"]) or "-",
                            }
                            for r in row["remedies"]
                        ]
                    )
                    st.dataframe(table.round(2), hide_index=True, width="stretch")
                    cols = st.columns(min(4, len(row["remedies"])))
                    for i, r in enumerate(row["remedies"][:4]):
                        if cols[i].button(
                            f"Run: {r['remedy']['name']}", key=f"doc_apply_{row['rank']}_{i}"
                        ):
                            _apply(entry, r["remedy"]["changes"])
            p = report.get("prescription")
            if p:
                st.subheader("Meet my budget")
                verdict = "reached" if p["reached"] else "not reached"
                (st.success if p["reached"] else st.warning)(
                    f"Target drop ≤ {p['target_drop']:.2f} points: **{verdict}** with "
                    f"{p['describe']}. {p['note']}."
                )
                if not p["claim_holds"]:
                    st.warning(
                        "On the held-out images the prescribed recipe did not lower the drop by "
                        "more than its calibration-seed spread: the improvement seen on the "
                        "selection images may be luck."
                    )
                widgets.plot(doctor_figures.prescription_figure(p), key="doc_presc")
                st.dataframe(
                    pd.DataFrame(
                        [
                            {
                                "step": s["step"],
                                "recipe": s["trial"]["describe"],
                                "drop on selection (mean)": s["trial"]["drop_mean"],
                                "seed spread": f"{s['trial']['seed_spread']['min']:.2f}.."
                                f"{s['trial']['seed_spread']['max']:.2f}",
                            }
                            for s in p["steps"]
                        ]
                    ).round(2),
                    hide_index=True,
                    width="stretch",
                )
                st.markdown("**Replay it from the command line:**")
                st.code(p["command"], language="bash")
                if st.button("Run the prescribed recipe", type="primary", key="doc_prescribed"):
                    _apply(entry, p["recipe"] | {"keep_fp32": tuple(p["recipe"]["keep_fp32"])})
