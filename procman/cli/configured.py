"""The daemon a config file's factory makes, under the config's name, with its env and cwd."""

from __future__ import annotations

import inspect
import os
from typing import Any


class ConfiguredDaemon:
    """A factory's daemon under the config's name, with its env and cwd applied in its own process."""

    def __init__(self, name: str, inner: Any, env: dict[str, str], cwd: str | None) -> None:
        self.name = name
        self.inner = inner
        self.env = env
        self.cwd = cwd

    def _enter(self) -> None:
        os.environ.update(self.env)
        if self.cwd is not None:
            os.chdir(self.cwd)

    def start(self) -> Any:
        self._enter()
        return self.inner.start()

    def stop(self) -> Any:
        return self.inner.stop()


class AsyncConfiguredDaemon(ConfiguredDaemon):
    """The same, for a daemon with an ``async def`` start() or stop() (run on uvloop in the child)."""

    async def start(self) -> Any:
        self._enter()
        result = self.inner.start()
        return await result if inspect.isawaitable(result) else result

    async def stop(self) -> Any:
        result = self.inner.stop()
        return await result if inspect.isawaitable(result) else result
