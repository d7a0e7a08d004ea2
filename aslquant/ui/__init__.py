"""Dashboard helpers. ``figures`` holds pure Plotly builders (no Streamlit import), so the CLI's
HTML report and the tests use the very same figures as the pages."""
