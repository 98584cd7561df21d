"""The one exception type for mistakes a user can fix: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input (config, path, name, data): the message names the cause and the fix, on one line."""
