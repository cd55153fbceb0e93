"""The exception types the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input or configuration: reported as one line, never as a traceback."""


class VerificationFailed(RuntimeError):
    """A computed result failed its own check (capture vs the model, pruned vs masked model)."""


class UnsupportedTransformers(UserError):
    """The installed transformers calls its delta-rule functions in a way staterank cannot read."""
