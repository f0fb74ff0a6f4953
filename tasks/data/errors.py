"""Errors for a user's files that cannot be read."""
from __future__ import annotations

from dyt.train.config import ConfigError


class UnreadableFile(ConfigError):
    """A data file that cannot be read, found while training reads it: the runner prints the message as one `error: …`
    line. Raised in a DataLoader worker, torch re-raises it in the main process as `UnreadableFile("Caught
    UnreadableFile in DataLoader worker process 0.\\nOriginal Traceback …")` (torch/_utils.py
    ExceptionWrapper.reraise): the constructor keeps the original one-line message, the traceback's last line."""

    def __init__(self, message: str):
        if "\nOriginal Traceback" in message:
            message = message.rstrip().rpartition("\n")[2].partition(f"{type(self).__name__}: ")[2] or message
        super().__init__(message)
