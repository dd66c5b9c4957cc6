"""One exception type for bad user input; the CLI prints its message as a single line and exits 2.

Entry point: `UserError`, `cli_exit(job, *args)`.
"""


class UserError(ValueError):
    """Bad input from the user. The message is one line and names the fix."""


def cli_exit(job, *args) -> int:
    """Run a CLI's job: a UserError becomes one line on stderr and exit status 2; Ctrl-C one line and 130 (the
    job's own cleanup has run by then: an export leaves nothing half-written); success is 0."""
    import sys
    try:
        job(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
