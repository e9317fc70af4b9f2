"""User-facing errors: the command line prints their message (one paragraph) and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (bad path, option, file or data), as opposed to an internal fault."""


class ConfigError(UserError, ValueError):
    """An invalid option or configuration value (also a ValueError for code that catches those)."""
