"""The exception types for what a user can fix (a wrong model name, a missing file, a bad
hyperparameter, a full disk) or chose (Ctrl-C). `run.py` prints the message as a single
sentence and exits with `exit_code`; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    exit_code = 2


class NonFiniteLoss(UserError):
    """The loss or the weights became NaN or infinite: nothing of it is ever saved."""


class Interrupted(UserError):
    """Ctrl-C: one line that says how to continue."""
    exit_code = 130
