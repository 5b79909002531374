"""The one exception type for mistakes a user can fix (a wrong model name, a
missing file, a bad hyperparameter). `run.py` prints its message as a single
sentence and exits with code 2; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    pass
