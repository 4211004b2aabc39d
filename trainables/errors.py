"""Errors a user can cause. The CLI prints the message as one line and exits non-zero."""


class RankhouseError(Exception):
    """A problem with the user's input: the message names the file/key/track and the fix."""


class TrialFailed(RuntimeError):
    """A trial cannot go on (e.g. a non-finite loss); the message is the reason."""
