"""Error types the project raises for problems a user can fix.

The CLI catches :class:`TrackerInputError` and prints its one-line message with a
non-zero exit; anything else is a bug and keeps its traceback.
"""
import logging
import sys


class TrackerInputError(ValueError):
    """Bad input a user can fix: a missing file, a malformed row, an impossible box."""


class TrackerStateError(TrackerInputError, RuntimeError):
    """A call out of order, e.g. ``update`` before ``init``."""


class SequenceError(TrackerInputError):
    """A sequence source (folder, video, glob, camera) cannot be read as asked.

    The message names the file and, where it applies, the line. ``problem`` and ``advice``
    are its two halves, kept apart so that a command with other means (training's
    --sequences) can give its own advice for the same problem.
    """

    def __init__(self, problem: str, advice: str | None = None, names_targets: bool = False):
        self.problem = problem
        self.advice = advice
        # the advice names the targets of an OTB folder to give instead (Jogging.1): it holds
        # for every command, where the tracker's other advice (--init, a glob) may not
        self.names_targets = names_targets
        super().__init__(f"{problem}; {advice}" if advice else problem)


class ModelError(TrackerInputError):
    """A model folder is missing, incomplete or does not match its manifest."""


class ArtifactError(TrackerInputError):
    """A compiled artifact set is missing, stale or built for something else."""


def last_line(e: BaseException) -> str:
    """The last line of an error's text (MXNet's errors end with the cause after a stack)."""
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else str(e)


def write_error(what, e: BaseException) -> OSError:
    """An MXNetError met while writing ``what`` (a full disk, as MXNet reports it) as the
    OSError it is: one line for the user."""
    return OSError(f"cannot write {what}: {last_line(e)}")


class _LowerLevel(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def cli_logging() -> None:
    """Log warnings (and worse) to stderr as ``warning: ...``, the form of the CLI's
    ``error: ...`` lines and of training's warnings, for the command-line entry points."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowerLevel())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
