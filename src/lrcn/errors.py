"""The one exception type that reaches users as a message instead of a traceback."""


class LrcnError(Exception):
    """A problem with the user's input, files or configuration.

    The message must say which file, which record and what is wrong; the CLI prints it to
    stderr and exits non-zero without a traceback.
    """
