"""Every user-facing error of sr-arch, in one leaf module (it imports nothing from the package).

All of them derive from ``SRArchError``: an entry point (``train.py``, ``test.py``, ``sr-arch ...``)
catches that one type and prints the message as one line, without a traceback. Each class also keeps
the built-in base it always had (``ValueError`` / ``RuntimeError`` / ``FileNotFoundError``), so code
that caught those still works.

Every message names what the user can act on: the option file and dotted key, the checkpoint path,
the image path or the command-line flag.
"""
from __future__ import annotations


class SRArchError(Exception):
    """Base of every error whose message is meant for the user as it is (one line, no traceback)."""


def one_line(message: str) -> str:
    """``message`` as one line for a command's ``error:`` output (whitespace runs, newlines too, -> one space)."""
    return ' '.join(message.split())


# ---------------------------------------------------------------------------------------------- options


class OptionError(SRArchError, ValueError):
    """An option file or command-line value is missing or invalid; the message names file and key."""


class OptionValidationError(OptionError):
    """One or more option-file problems; one line each, naming the file and the dotted key."""


class RealDegradationError(OptionError):
    """An option of the Real-ESRGAN degradation is missing or unusable (message names file and key)."""


class LauncherError(SRArchError, RuntimeError):
    """The launcher named on the command line does not match the process environment."""


# ---------------------------------------------------------------------------------------------- weights


class CheckpointError(SRArchError, RuntimeError):
    """A checkpoint file could not be read or holds no usable weights."""


class MissingVGGWeightsError(CheckpointError, FileNotFoundError):
    """The VGG weights of a perceptual loss are not on disk (nothing is downloaded)."""


class DetectionError(SRArchError, ValueError):
    """The state_dict matches no supported network (the message says what is closest and what differs)."""


# ---------------------------------------------------------------------------------------------- running


class TrainingError(SRArchError, RuntimeError):
    """The training set-up cannot work (message names the option and value)."""


class NonFiniteError(SRArchError, RuntimeError):
    """A loss, gradient norm or weight became NaN/inf; training stops without saving it."""


class InferenceError(SRArchError, RuntimeError):
    """A one-line, user-facing error about one file."""


class DemoError(SRArchError, RuntimeError):
    """The demo cannot go on; the message says why."""


class ExportError(SRArchError, RuntimeError):
    """``sr-arch export`` cannot write the file; the message names the file or flag."""


class CompareError(SRArchError, RuntimeError):
    """``sr-arch compare`` cannot make the figure; the message names the file or option."""


class PublishedDataError(SRArchError, ValueError):
    """The published-results data file is malformed (the message names the file and the entry)."""


# ---------------------------------------------------------------------------------------------- data


class DataLoadingError(SRArchError, RuntimeError):
    """Base of the sample-loading errors; keeps its one line when a dataloader worker re-raises it."""

    def __init__(self, message: str) -> None:
        # re-raised from a dataloader worker, the message is the worker's whole traceback: keep our line
        name = type(self).__name__
        if message.startswith(f'Caught {name}'):
            last = message.strip().splitlines()[-1]
            message = last.split(f'{name}: ', 1)[-1]
        super().__init__(message)


class BadImageError(DataLoadingError):
    """A training image or LMDB entry cannot be read; the message names the file or the LMDB path and key."""


class PairScaleError(DataLoadingError):
    """An LR / GT pair whose sizes are not 1 : scale (basicsr's ``Scale mismatches``), naming both files."""


class PrepareError(SRArchError, RuntimeError):
    """A preparation step cannot go on; the message says which file / option and why."""


class CorruptImageError(PrepareError):
    """An image file that cannot be read or decoded (truncated, corrupt, empty, unsupported)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f'{self.path}: {self.reason}'
