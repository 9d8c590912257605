"""Imported by procman's forkserver at its start (a preload): the forkserver ignores SIGTERM.

The forkserver stays in the manager's process group. A SIGTERM to that whole group (``timeout``,
``kill -- -PGID``, a shell's job control) would otherwise kill it, and with it, by their
parent-death signal, every daemon and worker it forked - before the manager could stop them
gracefully. It still ends with the manager: it exits when the manager's end of its pipe closes.
Children restore SIGTERM's default in their bootstrap. Imported anywhere else, this does nothing.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "_PROCMAN_FORKSERVER_PARENT"

if "multiprocess.forkserver" in sys.modules and os.environ.get(ENV) == str(os.getppid()):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .linux import set_title  # preloaded in the forkserver before this module

    set_title("procman: forkserver")
