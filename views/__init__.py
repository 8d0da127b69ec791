"""Streamlit pages; shared helpers live in common.py."""
