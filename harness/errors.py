"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a name, a path, a setting): the message says what and how to fix it."""


class LosslessFailure(Exception):
    """A method labelled lossless did not reproduce vanilla's greedy text: the run ends with exit code 3."""
