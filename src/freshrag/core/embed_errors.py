"""Errors of the embedding backends, in a module that imports nothing: pure modules (ingest's
indexing) can tell an embedding outage from a bad input without reaching a model library."""

from __future__ import annotations


class BackendError(RuntimeError):
    """A backend could not be built or loaded, or could not embed an input; the message says
    which and why."""


class BackendUnavailableError(BackendError):
    """The backend cannot embed anything at the moment, whatever the input: a remote endpoint
    unreachable, timing out, answering 429/5xx after every retry, rejecting the key or the model
    (401/403/404), or answering with the wrong dimension. Not the input's fault: callers retry
    later or stop; they must not dead-letter the input for it."""
