"""External programs as daemons, under the same supervision as Python ones.

The command runs under a small Python child (the "shim", forked cheaply by the forkserver) that
speaks the control protocol for it: ready once the program was exec'd, ``stop`` becomes SIGTERM to
the program, and the program's own exit (code or signal) becomes the shim's, so the manager sees
and decodes it exactly as for a Python daemon. The program inherits the shim's stdout/stderr, which
are already the manager's log pipes, and a parent-death signal: if the shim is killed, so is it.
Like every daemon's process, the shim runs below the daemon's guard (procman._child.guard): what
the program leaves behind when it ends, children it ``setsid()``'d or daemonized included, is
killed then. So a program that daemonizes itself is stopped as soon as its foreground process exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from ._errors import DaemonError
from ._names import check_name

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the forked child before exec: only async-signal-safe work (one prctl call).
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class CommandDaemon:
    """A daemon that runs an external program.

    Args:
        name: the daemon's name.
        argv: the program and its arguments (no shell).
        env: extra environment variables (merged over the manager's environment).
        cwd: the working directory.
        inherit_env: start from the manager's environment (default) or from ``env`` alone.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        self.name = check_name(name)
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise DaemonError(
                f"command daemon {name!r}: argv must be a non-empty list of strings such as "
                f"['python', '-m', 'http.server'], got {argv!r}"
            )
        self.argv = list(argv)
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise DaemonError(f"command daemon {name!r}: env must map str to str, got {env!r}")
        self.env = dict(env) if env is not None else None
        self.cwd = os.fspath(cwd) if cwd is not None else None
        if self.cwd is not None and not os.path.isdir(self.cwd):
            raise DaemonError(f"command daemon {name!r}: cwd {self.cwd!r} is not a directory")
        self.inherit_env = inherit_env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_proc"] = None
        return state

    def start(self) -> None:
        env = dict(os.environ) if self.inherit_env else {}
        if self.env:
            env.update(self.env)
        self._proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the shim has no other busy threads
        )
        threading.Thread(target=self._wait, name="procman-command", daemon=True).start()

    def _wait(self) -> None:
        proc = self._proc
        assert proc is not None
        code = proc.wait()
        if self._stopping:
            return
        # The program ended on its own: end the shim the same way so the manager decodes it.
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        if code < 0:
            # Die by the same signal. signal.signal() only works on the main thread, so reset the
            # disposition through libc (faulthandler and Python's SIG_IGN of SIGPIPE included).
            import faulthandler

            faulthandler.disable()
            ctypes.CDLL(None).signal(-code, 0)  # SIG_DFL
            # Directed at this thread, so it is delivered before pthread_kill returns.
            signal.pthread_kill(threading.get_ident(), -code)
        os._exit(code if code >= 0 else 128 - code)

    def send_signal(self, signum: int) -> None:
        """Deliver ``signum`` to the program (``procman signal NAME SIG``); nothing once it ended."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        proc.wait()  # the manager escalates to SIGTERM/SIGKILL of the whole group on its deadline

    def __repr__(self) -> str:
        return f"CommandDaemon({self.name!r}, {self.argv!r})"
