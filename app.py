"""stylelab's front door: `streamlit run app.py`. Routes to the pages, asks for sign-in when it is on (an
`[auth]` section in the secrets, see views/gate.py) and draws the shared sidebar.

Only Streamlit is imported here: the engine (PyTorch, MLflow) is imported in the background (`views.boot`)
so that on a server's first visit the studio's uploaders show at once; other pages wait for it."""

import streamlit as st

from views import boot
from views.gate import require_sign_in, signed_out

boot.preload(start_queue=True)
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
if navigation.url_path not in ("studio", ""):  # the studio waits itself, after drawing its uploaders
    boot.wait()
if boot.ready():
    from views.auth import account_sidebar
    from views.common import sidebar

    sidebar()
    account_sidebar()
else:
    st.sidebar.caption("Starting: loading PyTorch and MLflow, once per server start…")
navigation.run()
