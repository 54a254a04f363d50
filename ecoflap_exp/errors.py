"""The one exception type that reaches the user as a message instead of a stack trace."""


class UserError(Exception):
    """Bad input (config value, missing file, unusable data): the message names the fix."""
