"""The error types every layer raises; the CLI prints them as one line."""

from __future__ import annotations


class MembraneError(Exception):
    """Base class: an error a user can act on; str() is the one line shown."""


class InputError(MembraneError):
    """Bad input: names the place (file, document, field path) and what is wrong."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class NotFound(MembraneError):
    """A named object (endpoint, pod, lab, ...) does not exist."""


class Conflict(MembraneError):
    """A request conflicts with existing state (duplicate, address in use, ...)."""


class DatapathError(MembraneError):
    """The kernel refused: says what, where and what to do."""
