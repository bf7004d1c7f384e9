"""The error a training run stops with before it writes anything.

A ``CLIError`` carries a one-line message; ``fastbert.training.cli.run_cli`` prints it as ``prog: error: ...`` on
stderr and exits with code 2. Bad arguments and input files are found before anything is written, so nothing is
overwritten.
"""
from __future__ import annotations


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


class CLIError(Exception):
    """Bad input found before anything is written: reported as one line on stderr, exit code 2."""
