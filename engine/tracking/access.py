"""Who owns a run, and who may change it (cancel it, delete it): one pure rule for every caller.

With sign-in off the app has one user, who may change every run (`SINGLE_USER`). With sign-in on, a
run's owner is the signed-in user who started it (tag `owner`, an e-mail address), and only the owner
or an admin may change it; runs without an owner (started with sign-in off, or from the command line)
are the admins'. Everyone may read every run: viewing and comparing are never refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.core.errors import InputError
from engine.tracking.schema import OWNER_TAG


class NotAllowed(InputError):
    """Someone who may not change a run asked to (the message says who may)."""


@dataclass(frozen=True)
class Actor:
    """Who asks. `user`: the signed-in identity (an e-mail address), None when sign-in is off, i.e. the
    one user of a single-user app, who may do anything. `admin`: on the configured admin list."""

    user: str | None = None
    admin: bool = False

    @classmethod
    def signed_in(cls, user: str, admins: Iterable[str] = ()) -> Actor:
        """A signed-in user; admin when `user` is in `admins` (e-mail addresses compare case-blind)."""
        user = user.strip()
        if not user:
            raise ValueError("a signed-in user needs an identity")
        return cls(user=user, admin=_same(user, admins))

    @property
    def single_user(self) -> bool:
        return self.user is None


SINGLE_USER = Actor()


def _same(user: str, others: Iterable[str]) -> bool:
    folded = user.strip().casefold()
    return any(folded == other.strip().casefold() for other in others)


def run_owner(tags: Mapping[str, str]) -> str | None:
    """The run's owner from its tags, or None when it has none (started with sign-in off, or the CLI)."""
    owner = tags.get(OWNER_TAG, "").strip()
    return owner or None


def may_change(actor: Actor, owner: str | None) -> bool:
    """Whether `actor` may cancel or delete a run owned by `owner` (see the module docstring)."""
    if actor.single_user or actor.admin:
        return True
    return owner is not None and actor.user is not None and _same(actor.user, [owner])


def refusal(actor: Actor, owner: str | None, action: str = "change") -> str | None:
    """None when `actor` may `action` ("cancel", "delete") the run; else why not, in a sentence."""
    if may_change(actor, owner):
        return None
    whose = f"its owner ({owner})" if owner else "an admin (it has no owner: it was started without sign-in)"
    if owner:
        whose += " or an admin"
    return f"Only {whose} can {action} this run; you are signed in as {actor.user}."


def check_may_change(actor: Actor, owner: str | None, action: str = "change") -> None:
    """Raise NotAllowed, with `refusal`'s reason, unless `actor` may `action` the run."""
    reason = refusal(actor, owner, action)
    if reason is not None:
        raise NotAllowed(reason)
