"""Errors that vimstm reports to users as one clear message (the CLI prints no trace)."""

from __future__ import annotations


class VimstmError(Exception):
    """Base class: a problem with the user's input, with the fix in the message."""


class CheckpointError(VimstmError):
    """A checkpoint that is missing, unreadable, unsafe or made for another model."""


class DataError(VimstmError):
    """A data folder or archive that is missing, empty or does not fit the model."""


class ConfigError(VimstmError, ValueError):
    """An option out of range or unknown (ratio, method, schedule, image size...)."""
