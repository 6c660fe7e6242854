"""The project's user-facing error: one message naming the problem and the fix."""


class LaddError(ValueError):
    """Bad input from the user (a checkpoint, a folder, a config value), with what to do about it."""
