"""The ways a training run stops early, each with its documented exit code.

A run that stops on one of these prints one line on stderr (``prog: error: ...``) and exits with ``exit_code``:

==== =====================================================================================================
code meaning
==== =====================================================================================================
0    finished (or stopped by ``--stop-after``); checkpoint and exported model written
1    finished, but the data-parallel replicas diverged (reported in the summary line)
2    ``CLIError``: bad arguments or input files; found before anything is written (or a ``--resume``
     checkpoint that fails verification), nothing is overwritten
3    ``NonFiniteError``: the loss, the gradient norm or the weights became NaN/Inf; nothing non-finite is
     saved, the last good checkpoint and exported model stay as they were
4    ``OutputError``: an output could not be written (disk full, permissions); the previous checkpoint stays
130  interrupted (SIGINT / Ctrl-C): training stops after the current step and saves a checkpoint there
==== =====================================================================================================
"""
from __future__ import annotations

EXIT_CODES_HELP = ("exit codes: 0 done; 1 replicas diverged; 2 bad arguments or input (nothing written); 3 loss, "
                   "gradients or weights became NaN/Inf (last good checkpoint kept); 4 an output could not be "
                   "written (previous checkpoint kept); 130 interrupted (checkpoint saved at the last step)")


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


def reason(exc: BaseException, limit: int = 160) -> str:
    """A short, complete description of ``exc`` for a one-line error: its first line, cut at a sentence or word
    boundary (never mid-word) when longer than ``limit``. Undecodable bytes are described by value and offset."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "") or type(exc).__name__
    if len(text) <= limit:
        return text.rstrip(".")
    cut = text[:limit]
    end = cut.rfind(". ")
    return cut[:end] if end > limit // 2 else cut.rsplit(" ", 1)[0] + " ..."


class TrainingError(Exception):
    """A run that cannot go on: one line on stderr (``str(self)``) and ``exit_code``."""

    exit_code = 1


class CLIError(TrainingError):
    """Bad input found before anything is written (or a checkpoint that fails verification): exit code 2."""

    exit_code = 2


class NonFiniteError(TrainingError):
    """The loss, gradient norm or weights became NaN/Inf; nothing non-finite was saved: exit code 3."""

    exit_code = 3


class OutputError(TrainingError):
    """An output file could not be written (disk full, permissions); earlier outputs are intact: exit code 4."""

    exit_code = 4


class Interrupted(TrainingError):
    """SIGINT: the loop stopped at a step boundary after saving a checkpoint there: exit code 130."""

    exit_code = 130
