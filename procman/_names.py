"""Daemon name rules: lowercase words joined by hyphens (``http-server``, ``kafka-consumer``)."""

from __future__ import annotations

import re

from ._errors import DaemonError

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME = 64


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid daemon name, else raise :class:`DaemonError`."""
    if not isinstance(name, str):
        raise DaemonError(
            f"daemon name must be a str, got {type(name).__name__} {name!r}; "
            "give the daemon a `name` attribute such as 'http-server'"
        )
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise DaemonError(
            f"invalid daemon name {name!r}: use lowercase words of letters and digits joined by "
            f"single hyphens, starting with a letter, at most {MAX_NAME} characters "
            "(for example 'http-server' or 'kafka-consumer')"
        )
    return name
