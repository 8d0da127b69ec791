"""stylelab's front door: `streamlit run app.py`. Routes to the pages and draws the shared sidebar."""

import streamlit as st

from views.common import sidebar

st.set_page_config(page_title="stylelab", page_icon=":material/palette:", layout="wide")
navigation = st.navigation(
    [
        st.Page("views/studio.py", title="Studio", icon=":material/palette:", url_path="studio", default=True),
        st.Page("views/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
        st.Page("views/sweep.py", title="Sweep", icon=":material/grid_view:", url_path="sweep"),
        st.Page("views/layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    ]
)
sidebar()
navigation.run()
