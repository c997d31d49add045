"""The plugin's user-facing error: a message that names the case, the problem and the fix."""


class UserInputError(ValueError):
    """Bad input from the user (files, plans, options). The CLI prints it without a traceback."""
