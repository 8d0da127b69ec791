"""Sign-in: Streamlit's own `st.login` / `st.user` with an OpenID Connect provider, on when the secrets
(`.streamlit/secrets.toml`, or `--secrets.files`) have an `[auth]` section; without one the app has one
user and nothing here asks anything.

With sign-in on, every page asks an anonymous visitor to sign in first (`require_sign_in`), and brings
them back to the address they opened once they have. Who is signed in (`identity`) owns the runs they
start; `views.auth` turns that into the `actor` the job queue checks. `[stylelab] admins = ["…"]` lists
who may change every run.

Streamlit's callback (`/oauth2callback`) always sends the browser to the app's root, without the page
or query it came from. So the gate keeps the address in a short-lived cookie of our own (`NEXT_COOKIE`,
set by a line of JavaScript before the visitor leaves), and the root page, signed in, switches to it.

Streamlit only (no engine, no MLflow), so `app.py` can ask for sign-in before the heavy imports.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAuthError
from streamlit.navigation.page import StreamlitPage

NEXT_COOKIE = "stylelab_next"  # where a visitor who is signing in wants to go: "<url path>?<query>"
NEXT_MAX_AGE_S = 600  # long enough to sign in, short enough not to surprise a later visit
MAX_NEXT_LENGTH = 2000
SETTINGS = "stylelab"  # the secrets section with stylelab's own settings: admins = ["…"]
_PROVIDER_KEYS = ("client_id", "server_metadata_url")

log = logging.getLogger(__name__)


def sign_in_enabled() -> bool:
    """Whether the secrets have an `[auth]` section (then every page asks to sign in). A secrets file that
    exists but does not parse may be meant to turn sign-in on, so the page stops with an error instead of
    serving the app to anyone (fail closed)."""
    if st.secrets.load_if_toml_exists():
        return "auth" in st.secrets
    unreadable = [path for path in st.config.get_option("secrets.files") if Path(path).is_file()]
    if unreadable:
        log.error("The secrets file %s does not parse (Streamlit logged why at start): serving nothing", unreadable)
        st.error(
            "This server's secrets file cannot be read, so it cannot check who you are, and shows nothing. "
            "Tell its administrator (the server's log says which file and why)."
        )
        st.stop()
    return False


def _user() -> dict[str, Any]:
    return st.user.to_dict()


def signed_in() -> bool:
    return bool(_user().get("is_logged_in"))


def identity() -> str | None:
    """Who is signed in, as recorded on their runs: the e-mail address (else `preferred_username`, else
    the provider's `sub`); None with sign-in off or nobody signed in."""
    if not sign_in_enabled() or not signed_in():
        return None
    user = _user()
    for claim in ("email", "preferred_username", "sub"):
        value = str(user.get(claim) or "").strip()
        if value:
            return value
    return None


def admins() -> tuple[str, ...]:
    """`[stylelab] admins` from the secrets: who may cancel and delete every run."""
    try:
        listed = st.secrets.get(SETTINGS, {}).get("admins", [])
    except Exception:
        return ()
    return (listed,) if isinstance(listed, str) else tuple(str(a) for a in listed)


def owner() -> str | None:
    """The owner of a run started now: the signed-in user, or None with sign-in off (the OS user then)."""
    return identity()



# --------------------------------------------------------------------------------------------------
# The gate


def signed_out() -> bool:
    """Sign-in is on and nobody is signed in: the navigation is hidden and `require_sign_in` stops."""
    return sign_in_enabled() and not signed_in()


def providers() -> list[str | None]:
    """The providers to offer: the `[auth.<name>]` sections, or None for one unnamed provider in `[auth]`."""
    section = st.secrets.get("auth", {})
    named = [name for name, value in section.items() if isinstance(value, Mapping) and
             any(key in value for key in _PROVIDER_KEYS)]  # fmt: skip
    return named or [None]


def location(page: StreamlitPage) -> str:
    """The address being opened, as `<url path>?<query>` (e.g. `runs?run=<id>`)."""
    query = urllib.parse.urlencode(st.query_params.to_dict())
    return page.url_path + (f"?{query}" if query else "")


def return_target(cookie: str | None, paths: Sequence[str]) -> tuple[str, dict[str, str]] | None:
    """The page and query params a `NEXT_COOKIE` value asks for, when it names one of `paths` (the app's
    own pages: the cookie can never send anyone elsewhere); None for the root page, or for anything
    malformed."""
    if not cookie or len(cookie) > 3 * MAX_NEXT_LENGTH:
        return None
    target = urllib.parse.unquote(cookie)
    path, _, query = target.partition("?")
    if not path or path not in paths or len(target) > MAX_NEXT_LENGTH:
        return None
    return path, dict(urllib.parse.parse_qsl(query, keep_blank_values=False))


def _cookie_script(value: str, max_age: int) -> str:
    cookie = f"{NEXT_COOKIE}={urllib.parse.quote(value, safe='')}; Path=/; Max-Age={max_age}; SameSite=Lax"
    return (
        f"<script>document.cookie = {json.dumps(cookie)} + "
        "(location.protocol === 'https:' ? '; Secure' : '');</script>"
    )


def require_sign_in(pages: Sequence[StreamlitPage], page: StreamlitPage) -> None:
    """With sign-in on: an anonymous visitor sees only the sign-in page (and the page stops); a visitor who
    just signed in, at the root, goes on to the address they had opened. Nothing with sign-in off."""
    if not sign_in_enabled():
        return
    if signed_in():
        _return_after_sign_in(pages, page)
        return
    st.html(_cookie_script(location(page), NEXT_MAX_AGE_S), unsafe_allow_javascript=True)
    st.title("Sign in to stylelab")
    opened = location(page)
    st.write(
        "This stylelab is for signed-in users. Sign in with your organisation's account"
        + (f"; you come back to `/{opened}` afterwards." if opened else ".")
    )
    for provider in providers():
        label = "Sign in" if provider is None else f"Sign in with {provider.title()}"
        if st.button(label, type="primary", icon=":material/login:", key=f"sign_in_{provider or 'default'}"):
            try:
                st.login(provider)
            except StreamlitAuthError as exc:  # e.g. a key missing from [auth]: for the log, not the visitor
                log.warning("Sign-in is misconfigured: %s", exc)
                st.error("Sign-in is not set up correctly on this server (its log says why); tell its administrator.")
    st.stop()


def _return_after_sign_in(pages: Sequence[StreamlitPage], page: StreamlitPage) -> None:
    """Once per session: after the provider's callback (which lands on the root), switch to the page the
    visitor had opened (`NEXT_COOKIE`), and forget the cookie on the next run."""
    if st.session_state.pop("_stylelab_clear_next", False):
        st.html(_cookie_script("", 0), unsafe_allow_javascript=True)
    if st.session_state.get("_stylelab_next_done"):
        return
    st.session_state["_stylelab_next_done"] = True
    cookie = st.context.cookies.get(NEXT_COOKIE)
    if not isinstance(cookie, str):  # none (AppTest has no browser cookies either)
        return
    by_path = {p.url_path: p for p in pages}
    target = return_target(cookie, list(by_path))
    if target is None or page.url_path != "":  # a visitor who opened the root, or another page, stays
        st.html(_cookie_script("", 0), unsafe_allow_javascript=True)
        return
    st.session_state["_stylelab_clear_next"] = True
    path, params = target
    st.switch_page(by_path[path], query_params=params)
