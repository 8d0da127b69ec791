"""stylelab's front door: `streamlit run app.py`. Routes to the pages, asks for sign-in when it is on (an
`[auth]` section in the secrets, see views/gate.py) and draws the shared sidebar.

The engine (PyTorch, MLflow) is imported here, before any page: a server's first visit waits for it (see
"Start-up: cold and warm" in the README for why it is not imported in the background)."""

import streamlit as st

from views.auth import account_sidebar
from views.common import sidebar
from views.gate import require_sign_in, signed_out

st.set_page_config(page_title="stylelab", page_icon=":material/palette:", layout="wide")
STUDIO = dict(title="Studio", icon=":material/palette:")
pages = [
    # Streamlit serves its default page at `/` only (its url_path becomes ""), so the studio is two
    # pages of one script: `/studio` (first: links to views/studio.py go there, as the README says)
    # and a hidden default one that `/` opens.
    st.Page("views/studio.py", url_path="studio", **STUDIO),
    st.Page("views/runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("views/sweep.py", title="Sweep", icon=":material/grid_view:", url_path="sweep"),
    st.Page("views/layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page("views/studio.py", url_path="home", default=True, visibility="hidden", **STUDIO),
]
navigation = st.navigation(pages, position="hidden" if signed_out() else "sidebar")
require_sign_in(pages, navigation)
sidebar()  # creates the job queue: jobs left by a restart start at the server's first visit
account_sidebar()
navigation.run()
