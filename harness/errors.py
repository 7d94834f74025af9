"""The two kinds of failure the CLI distinguishes.

UsageError is bad input or a missing prerequisite the user can fix (unknown backend, malformed
parameter, not root, no bcc): the CLI prints its message on one line and exits with status 2.
Anything else is a bug or a fault of the environment and is reported with its type.
"""


class UsageError(Exception):
    """Bad input or a missing prerequisite: one line on stderr, exit status 2."""


class Interrupted(Exception):
    """SIGTERM (or SIGINT) arrived: unwind through every cleanup, keep what was measured."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name
