"""Streamlit-only code of the dashboard: ``session`` (st.session_state behind typed accessors),
``cache`` (cached engine calls and shared jobs) and ``widgets`` (what the pages draw with).
Nothing outside ui/, pages/ and app.py imports this package or Streamlit.
"""
