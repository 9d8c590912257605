"""What keeps a child's leftovers from outliving it (step 4 of procman._child.boot).

* A **daemon** gets the *reaper guard* (:func:`split_off_reaper`): the process the manager started
  becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``) and forks; the fork runs the daemon, the
  original stays behind as its guard. A subreaper adopts every orphan below it, so each process the
  daemon ever started stays in the guard's tree, even one that called ``setsid()`` and whose parent
  exited. When the daemon's process ends (stop, crash, any signal) or the manager is gone (its end
  of the control pipe closes, or the parent-death signal), the guard SIGKILLs every process below
  it, reaps them, and only then exits, with the daemon's own status. It reaps adopted orphans all
  along, so none lingers as a zombie. Only a SIGKILL of the guard itself (which nothing in procman
  sends) defeats it; see README "What a daemon leaves behind".
* A **worker** keeps the light *shell guard* (:func:`start_shell_guard`): it blocks on a pipe that
  only the child holds open and, when the child is gone, SIGKILLs the child's process group.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import time
import traceback
from typing import NoReturn

from .linux import PR_SET_CHILD_SUBREAPER, alive, prctl, proc_stat, set_pdeathsig, set_title

SWEEP_BOUND = 5.0  # seconds the reaper guard keeps killing and reaping leftovers before it gives up


GUARD_SCRIPT = 'trap "" TERM INT HUP; read _; kill -s KILL -- -"$1"'


def start_shell_guard() -> None:
    """Start the group guard (see the module docstring).

    It is ``/bin/sh`` started with posix_spawn (vfork + exec: about 0.5 ms whatever this process's
    size, where a fork would copy its page tables), reading a pipe whose write end only this
    process holds: ``read`` returns at end of file, when this process is gone, and the guard
    SIGKILLs the group, itself included. It ignores SIGTERM/SIGINT/SIGHUP so that it outlives a
    SIGTERM to the group and still cleans up what ignored it.
    """
    r, _w = os.pipe()  # close-on-exec: programs the daemon execs never hold ``_w``
    try:
        os.posix_spawn(
            "/bin/sh",
            ["sh", "-c", GUARD_SCRIPT, "procman-guard", str(os.getpgid(0))],
            {},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except OSError:  # no /bin/sh: the parent-death signal and the pipe-EOF watcher remain
        os.close(_w)
    finally:
        os.close(r)
    # ``_w`` stays open, unused, until this process is gone.


# ---------------------------------------------------------------------------------------------
# The reaper guard of a daemon (step 4 above)

_guarded: int | None = None  # in the guard: the daemon's pid until it is reaped (SIGUSR1 forwarding)


def split_off_reaper(
    ctrl_in: int, ctrl_out: int, manager_pid: int, home_group: int, title: str | None
) -> None:
    """Fork: the daemon runs in the child, where this returns; this process stays as its guard.

    Only an ancestor adopts orphans, so the guard must sit above the daemon: the process the manager
    started and knows (its pid, its exit status, the process group named after it) becomes the
    guard, and the daemon runs one level down, in that group, which the guard itself leaves. So the
    manager's SIGTERM and SIGKILL of the group reach the daemon and everything still in its group,
    never the guard, which has to live on to sweep up what left the group.
    """
    guard_pid = os.getpid()
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # not inherited by the fork
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        set_pdeathsig()  # a guard killed by SIGKILL takes the daemon along
        if os.getppid() != guard_pid:
            os._exit(137)
        # Until the guard has left the group, a SIGKILL of the group would kill it too: start
        # nothing that could then escape. End of file instead of the go: the guard died.
        go = os.read(go_r, 1)
        os.close(go_r)
        if not go:
            os._exit(137)
        if title:
            set_title(f"{title} (daemon)")
        return
    os.close(go_r)
    try:
        _guard(pid, go_w, ctrl_in, ctrl_out, manager_pid, home_group)
    except BaseException:  # noqa: BLE001 - a bug here must not leave the daemon's tree behind
        try:
            traceback.print_exc()
        finally:
            _sweep(-1)
            os._exit(70)


def _guard(
    daemon: int, go_w: int, ctrl_in: int, ctrl_out: int, manager_pid: int, home_group: int
) -> NoReturn:
    """The guard's life: watch the daemon, forward the watchdog's SIGUSR1, sweep, exit as it did."""
    global _guarded
    _guarded = daemon
    os.close(ctrl_out)  # only the daemon talks to the manager
    parent = os.getppid()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    # The guard stays in the manager's process group: a Ctrl-C, ``timeout`` or ``kill -- -PGID``
    # there is the manager's to handle (a graceful stop), as for the forkserver. So these only
    # wake it, to check whether the manager is still there.
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _wake)
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)  # keep guarding while a shell suspends the host
    signal.signal(signal.SIGUSR1, _forward)
    # The parent's death (the manager's, or the forkserver's, which ends with the manager) now
    # wakes the guard instead of killing it: it has the daemon's tree to sweep first.
    set_pdeathsig(signal.SIGHUP)
    try:
        os.setpgid(0, home_group)
    except OSError:  # the manager's group is gone, and so is the manager: noticed below
        pass
    os.write(go_w, b"g")
    os.close(go_w)
    status = _watch(daemon, ctrl_in, parent, manager_pid, wake_r)
    _guarded = None
    if status is None:  # the manager is gone: nobody reads the logs or the exit status any more
        _sweep(wake_r)
        os._exit(137)
    killed = _sweep(wake_r)
    if killed:
        listed = ", ".join(f"{pid} ({name})" for pid, name in list(killed.items())[:5])
        more = f" and {len(killed) - 5} more" if len(killed) > 5 else ""
        line = f"procman: killed {len(killed)} process(es) the daemon left behind: {listed}{more}\n"
        try:
            os.write(2, line.encode())
        except OSError:
            pass
    _exit_as(status)


def _wake(signum: int, frame: object) -> None:
    """A signal that only wakes the guard's loop (through the wakeup fd)."""


def _forward(signum: int, frame: object) -> None:
    pid = _guarded
    if pid is not None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _watch(daemon: int, ctrl_in: int, parent: int, manager_pid: int, wake_r: int) -> int | None:
    """Wait until the daemon's process ends (its wait status) or the manager is gone (None)."""
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    # No events asked for: POLLHUP comes all the same, once the last write end closed. Only the
    # manager holds it, so that is the manager's death (or its giving up on this child).
    poller.register(ctrl_in, 0)
    if not alive(manager_pid):  # it died before the parent-death signal above was armed
        return None
    while True:
        status, _ = _reap(daemon)
        if status is not None:
            return status
        if os.getppid() != parent:
            return None
        for fd, _events in poller.poll():
            if fd == ctrl_in:
                return None
        _drain(wake_r)


def _reap(daemon: int) -> tuple[int | None, bool]:
    """Reap every child that ended (adopted orphans included); (the daemon's status, any left?)."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, False
        if pid == 0:
            return status, True
        if pid == daemon:
            status = st


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:  # EAGAIN: drained
        pass


def _sweep(wake_r: int) -> dict[int, str]:
    """SIGKILL everything below this process and reap it; returns pid -> name of what it killed.

    Until nothing is left: a process may fork between the scan and its kill, and its child, adopted
    by this subreaper, is found by the next scan. Bounded (SWEEP_BOUND): a process in uninterruptible
    sleep dies only when it wakes; it has its SIGKILL by then.
    """
    me = os.getpid()
    killed: dict[int, str] = {}
    deadline = time.monotonic() + SWEEP_BOUND
    poller = select.poll()  # not select(): a guard forked from a big host may hold fds past 1024
    if wake_r >= 0:
        poller.register(wake_r, select.POLLIN)
    while True:
        _, left = _reap(-1)
        if not left:  # no child at all: then nothing below either (orphans come up to us)
            return killed
        for pid, name in _descendants(me).items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.setdefault(pid, name)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return killed
        if wake_r >= 0:  # each death of a child (or adoption of a dead one) sends SIGCHLD
            poller.poll(min(remaining, 0.1) * 1000)
            _drain(wake_r)
        else:
            time.sleep(0.01)


def _descendants(root: int) -> dict[int, str]:
    """Live (non-zombie) processes below ``root``: pid -> command name, read from /proc."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        stat = proc_stat(entry) if entry.isdigit() else None
        if stat is None:
            continue
        name, fields = stat
        if len(fields) < 2 or fields[0] == b"Z":
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        names[pid] = name
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = names[pid]
                todo.append(pid)
    return found


def _exit_as(status: int) -> NoReturn:
    """End this process the way the daemon's ended (its code, or killed by its signal)."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    sig = -code
    faulthandler.disable()
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the daemon dumped its core, if any
    except (ImportError, ValueError, OSError):
        pass
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL: cannot be caught anyway
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
