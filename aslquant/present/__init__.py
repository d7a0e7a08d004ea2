"""Presentation shared by the pages and the reports: formatters, tables, Plotly figures.

No Streamlit here: the dashboard pages, report.md and report.html draw the same tables and
figures from the same builders.
"""
