"""The one base class for errors graft reports to a user as a single line (CLI) or a 4xx (service)."""


class GraftError(Exception):
    """A user-facing error: its message says what was expected and what came."""
