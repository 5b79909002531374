"""The exception types for what a user can fix (a wrong model name, a missing file, a bad
hyperparameter, a full disk) or chose (Ctrl-C, SIGTERM). `run.py` prints the message as a single
sentence and exits with `exit_code`; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    exit_code = 2


class NonFiniteLoss(UserError):
    """The loss or the weights became NaN or infinite: nothing of it is ever saved."""


class Interrupted(UserError):
    """Ctrl-C (exit code 130) or SIGTERM (143): one line that says how to continue."""
    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's preemption, `docker stop`), raised where the run is, as Ctrl-C is."""
