"""Errors that the command line reports as one line and a non-zero exit, without a traceback.

A ``UserError`` is the user's to fix (a bad name, an impossible value, a missing dataset); its
message says what to do. ``RunFailed`` is a run that started and could not finish (a NaN loss).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is one line that tells the user what to do. Exit status 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value that is impossible (sparsity >= 1, p >= q, negative epochs...)."""


class DatasetNotFound(UserError):
    """A dataset whose files are missing and cannot be downloaded."""


class RunFailed(Exception):
    """A run that failed while training (for example a loss that became NaN). Exit status 1."""

    exit_code = 1
