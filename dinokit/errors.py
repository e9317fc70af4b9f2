"""User-facing errors: the command line prints their message (one paragraph) and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (bad path, option, file or data), as opposed to an internal fault."""
