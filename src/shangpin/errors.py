"""User-fixable failures; each message says what was expected, what was found and what to do."""

from __future__ import annotations


class ShangpinError(Exception):
    """Base for user-fixable failures; the message is shown verbatim.

    Args:
        message: what was expected, what was found, and what to do.
        stage: the stage the failure belongs to; prefixed to the message.
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        self.stage = stage
        self.message = f"stage '{stage}': {message}" if stage else message
        super().__init__(self.message)


class ConfigError(ShangpinError):
    """Invalid configuration or usage (CLI exit 2; the service refuses to start)."""


class DataError(ShangpinError):
    """Malformed input data (HTTP 422). Names the file and line, or the field."""


class NotFittedError(ShangpinError):
    """A stage was used before it was trained or loaded (HTTP 503)."""


class IncompatibleModelError(ShangpinError):
    """A saved model was written by another format version (HTTP 503)."""


class NotFoundError(ShangpinError):
    """A record the request names does not exist (HTTP 404)."""


class ConflictError(ShangpinError):
    """The request does not fit the record's current state, e.g. a superseded suggestion (HTTP 409)."""
