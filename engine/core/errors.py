"""The one exception type for mistakes a user can make (bad files, bad settings)."""


class InputError(ValueError):
    """A user's input was wrong; the message says what was wrong and what to do, fit to show in the UI."""
