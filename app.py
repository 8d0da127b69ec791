"""stylelab's front door: `streamlit run app.py`. Routes to the pages and draws the shared sidebar."""

import streamlit as st

from pages.common import sidebar

st.set_page_config(page_title="stylelab", page_icon=":material/palette:", layout="wide")
navigation = st.navigation(
    [
        st.Page("pages/studio.py", title="Studio", icon=":material/palette:", url_path="studio", default=True),
        st.Page("pages/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    ]
)
sidebar()
navigation.run()
