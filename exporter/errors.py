"""One exception type for bad user input; the CLI prints its message as a single line and exits 2."""


class UserError(ValueError):
    """Bad input from the user. The message is one line and names the fix."""
