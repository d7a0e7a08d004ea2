"""Presentation shared by the pages and the reports: formatters, tables, Plotly figures.

No Streamlit here: the dashboard pages, report.md and report.html draw the same tables and
figures from the same builders.

- ``format``: every number as text, once (``n/a`` for missing, ``pending`` for latency
  still being timed, intervals).
- ``markup``: names made safe for Markdown and HTML.
- ``tables``: every table as a ``Table`` (DataFrame, Markdown, HTML) and the summary cards.
- ``figures``: every Plotly figure.
- ``document``: a report as blocks, rendered to Markdown or one offline HTML page.
"""
