"""Supervision under faults: concurrent lifecycle requests, processes a daemon leaves behind, spawns
that fail.

Each test here failed before its fix:

* 8 concurrent ``restart(name)`` calls spawned 8 processes for one daemon, 7 of them untracked.
* processes a daemon double-forked into a session of their own, or plain ``os.fork()`` children,
  outlived its stop and the manager's SIGKILL.
* a restart whose spawn failed (EMFILE) retried inside its own failure, one stack frame deeper per
  attempt, with no event for the failed attempt.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from daemons import Escapers, Quick, Stubborn
from helpers import Recorder, cmdline, descendants, pid_alive, proc_table

import procman
from procman import DaemonState, EventKind
from procman._proc.start import START_METHODS

TESTS = Path(__file__).parent
BOUND = 30.0  # seconds: every wait below is bounded by this (they normally take milliseconds)


def _titles() -> dict[int, str]:
    """pid -> title (the whole command line) of every live process."""
    return {pid: line for pid in proc_table() if (line := cmdline(pid)) is not None}


def _carriers(name: str) -> tuple[list[int], list[int]]:
    """The live processes of daemon ``name``: (guards titled ``procman: NAME``, daemon processes)."""
    titles = _titles()
    guards = [pid for pid, t in titles.items() if t == f"procman: {name}"]
    daemons = [pid for pid, t in titles.items() if t == f"procman: {name} (daemon)"]
    return guards, daemons


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22: starttime


def _instances_alive_together(name: str) -> int:
    """How many instances of daemon ``name`` (guard and daemon process) were provably alive at once.

    An instance is counted by its topmost process: the fork that becomes the daemon process keeps
    the guard's title for a moment. A scan of /proc is no snapshot: it may read an old guard just
    before it exits and its replacement a moment later. So the candidates are checked again, the
    youngest first: an older one still alive after a younger one was seen alive was alive together
    with it.
    """
    guards, daemons = _carriers(name)
    carriers = set(guards) | set(daemons)
    table = proc_table()
    tops = [p for p in carriers if p in table and table[p][0] not in carriers]
    if len(tops) < 2:
        return len(tops)
    return sum(pid_alive(p) for p in sorted(tops, key=_start_time, reverse=True))


def _assert_one_process(m: procman.Manager, name: str) -> None:
    """Exactly one process carries ``name``, and it is the one status() reports."""
    guards, daemons = _carriers(name)
    st = m.status()[name]
    assert st.state is DaemonState.RUNNING
    assert guards == [st.pid], f"processes titled 'procman: {name}': {guards}; status says pid {st.pid}"
    assert len(daemons) == 1 and proc_table()[daemons[0]][0] == st.pid, (daemons, st.pid)


def _wait_dead(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait (on pidfds, no polling) until every process in ``pids`` ended; those still alive after
    ``timeout`` seconds."""
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        waiting = set(fds)
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                waiting.discard(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return sorted(pid for pid in fds.values() if pid_alive(pid))


def _kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- 1. concurrent lifecycle requests for one daemon --------------------------------------------


def test_eight_concurrent_restarts_leave_one_process() -> None:
    with procman.Manager(on_event=None, output=lambda *a: None) as m:
        m.register(Quick("solo"))
        m.start(timeout=BOUND)
        go = threading.Barrier(8)
        results: list[object] = []

        def restart() -> None:
            go.wait(BOUND)
            try:
                results.append(m.restart("solo", timeout=BOUND))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                results.append(exc)

        threads = [threading.Thread(target=restart) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BOUND + 15)
        assert results == [procman.StopOutcome.STOPPED] * 8  # one after the other, each graceful
        _assert_one_process(m, "solo")


def test_eight_restarts_gathered_on_the_async_manager_leave_one_process() -> None:
    async def main() -> None:
        async with procman.AsyncManager(on_event=None, output=lambda *a: None) as m:
            await m.register(Quick("solo"))
            await m.start(timeout=BOUND)
            outcomes = await asyncio.gather(*(m.restart("solo", timeout=BOUND) for _ in range(8)))
            assert outcomes == [procman.StopOutcome.STOPPED] * 8
            st = (await m.status())["solo"]
            guards, daemons = _carriers("solo")
            assert st.state is DaemonState.RUNNING and guards == [st.pid] and len(daemons) == 1

    asyncio.run(main())


def test_a_storm_of_restart_stop_and_status_never_leaves_two_processes() -> None:
    recorder = Recorder()
    with procman.Manager(on_event=recorder, output=lambda *a: None) as m:
        m.register(Quick("storm"))
        m.start(timeout=BOUND)
        done = threading.Event()
        seen: list[int] = []  # instances alive together, looked at all through the storm

        def watch() -> None:
            while not done.is_set():
                seen.append(_instances_alive_together("storm"))
                done.wait(0.002)

        errors: list[BaseException] = []
        go = threading.Barrier(8)

        def client(seed: int) -> None:
            rng = random.Random(seed)
            go.wait(BOUND)
            for _ in range(6):
                op = rng.choice(("restart", "restart", "stop", "status"))  # a stopped one restarts
                try:
                    if op == "restart":
                        m.restart("storm", timeout=BOUND)
                    elif op == "stop":
                        m.stop_daemon("storm", timeout=BOUND)
                    else:
                        m.status()
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    errors.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(BOUND * 3)
        done.set()
        watcher.join(BOUND)
        assert not errors, errors
        assert seen and max(seen) <= 1, f"two processes of one daemon at once: {max(seen)}"
        st = m.status()["storm"]
        guards, daemons = _carriers("storm")
        if st.state is DaemonState.RUNNING:
            assert guards == [st.pid] and len(daemons) == 1
        else:
            assert st.state is DaemonState.STOPPED and st.pid is None and not guards and not daemons
        started = len(recorder.of(EventKind.STARTED, "storm"))
        exited = len(recorder.of(EventKind.EXITED, "storm"))
        assert started - exited == (1 if st.state is DaemonState.RUNNING else 0)  # each start paired
        m.restart("storm", timeout=BOUND)
        _assert_one_process(m, "storm")


# --- 2. processes a daemon leaves behind ---------------------------------------------------------


def _read_pids(path: Path) -> tuple[int, list[int]]:
    """What Escapers wrote: its own pid, the pids of what it left behind."""
    daemon, left = path.read_text().splitlines()
    return int(daemon), [int(p) for p in left.split()]


@pytest.mark.parametrize("method", START_METHODS)
def test_what_a_daemon_left_behind_dies_with_its_stop(
    method: str, tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    pidfile = tmp_path / "pids"
    left: list[int] = []
    try:
        with procman.Manager(start_method=method, on_event=None, output="logging") as m:
            m.register(Escapers("escapers", str(pidfile)))
            m.start(timeout=BOUND)
            _, left = _read_pids(pidfile)
            assert len(left) == 10 and all(pid_alive(p) for p in left)
            report = m.stop(timeout=BOUND)
            assert report.clean, report
            # stop() returns once the daemon's guard exited, and it exits after it killed and
            # reaped everything below it: no wait needed.
            assert [p for p in left if pid_alive(p)] == []
        lines = [r.getMessage() for r in caplog_all.records if r.name == "procman.daemon.escapers"]
        assert any("killed 10 process(es) the daemon left behind" in line for line in lines), lines
    finally:
        _kill_all(left)


def test_what_a_daemon_left_behind_dies_when_its_process_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    recorder = Recorder()
    left: list[int] = []
    try:
        with procman.Manager(on_event=recorder, output=lambda *a: None) as m:
            m.register(Escapers("escapers", str(pidfile)), restart="never")
            m.start(timeout=BOUND)
            daemon, left = _read_pids(pidfile)
            assert all(pid_alive(p) for p in left)
            os.kill(daemon, signal.SIGKILL)  # no stop(), no chance to clean up: a crash
            recorder.wait_kind(EventKind.EXITED, "escapers", timeout=BOUND)
            assert recorder.of(EventKind.EXITED)[0].reason == "SIGKILL(-9)"
            assert [p for p in left if pid_alive(p)] == []
    finally:
        _kill_all(left)


def test_what_a_command_left_behind_dies_with_its_stop() -> None:
    """An external program shares the daemon's guard: its setsid()'d child dies with its stop."""
    printed: list[int] = []
    seen = threading.Event()

    def output(name: str, stream: str, line: str) -> None:
        if line.startswith("LEFT "):
            printed.append(int(line.split()[1]))
            seen.set()

    # the child reports itself once in its own session, then sleeps (exec: same pid)
    script = "setsid sh -c 'echo LEFT $$; exec sleep 3600' & exec sleep 3600"
    try:
        with procman.Manager(on_event=None, output=output) as m:
            m.register(procman.CommandDaemon("command", ["sh", "-c", script]))
            m.start(timeout=BOUND)
            assert seen.wait(BOUND)
            (left,) = printed
            assert pid_alive(left) and os.getsid(left) == left  # a session of its own
            assert m.stop(timeout=BOUND).clean
            assert not pid_alive(left)
    finally:
        _kill_all(printed)


HOST = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import procman
    from daemons import Escapers

    m = procman.Manager(start_method=sys.argv[1], on_event=None)
    m.register(Escapers("escapers", sys.argv[2]))
    m.start(timeout=60)
    print("GUARD", m.status()["escapers"].pid, flush=True)
    time.sleep(3600)
    """
)


@pytest.mark.parametrize("method", START_METHODS)
def test_what_a_daemon_left_behind_dies_with_a_killed_manager(method: str, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(HOST.format(tests=str(TESTS)))
    pidfile = tmp_path / "pids"
    # TMPDIR: a SIGKILLed host cannot remove multiprocessing's temporary directory; keep it in tmp_path
    proc = subprocess.Popen(
        [sys.executable, str(script), method, str(pidfile)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    family: set[int] = set()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the host's own start timeout (and pytest-timeout)
        assert line.startswith("GUARD"), line
        guard = int(line.split()[1])
        daemon, left = _read_pids(pidfile)
        family = {guard, daemon, *descendants([guard]), *left}
        assert len(family) >= 12 and all(pid_alive(p) for p in family)  # guard, daemon, 10 left
        proc.kill()
        proc.wait(BOUND)
        alive = _wait_dead(family, BOUND)
        assert not alive, f"alive {BOUND}s after the manager was killed: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(BOUND)
        _kill_all(family | descendants([proc.pid]))
        if proc.stdout is not None:
            proc.stdout.close()


# --- 3. a spawn that fails during a restart --------------------------------------------------------

SPAWN_FAILS = textwrap.dedent(
    """
    import os, resource, signal, sys, threading
    sys.path.insert(0, {tests!r})
    import procman
    from daemons import Quick

    mode = sys.argv[1]
    lines = []
    gave_up = threading.Event()
    failed_spawn = threading.Event()
    ready_again = threading.Event()
    readies = 0

    def hook(e):
        global readies
        err = f"{{type(e.error).__name__}}:{{getattr(e.error, 'errno', None)}}" if e.error else "-"
        sys.stdout.write(f"EVENT {{e.kind.value}} {{e.reason!r}} {{err}}\\n")
        if e.kind is procman.EventKind.EXITED and e.reason.startswith("spawn failed"):
            failed_spawn.set()
        if e.kind is procman.EventKind.GAVE_UP:
            gave_up.set()
        if e.kind is procman.EventKind.READY:
            readies += 1
            if readies > 1:
                ready_again.set()

    if mode == "tight":  # no backoff at all, many retries: each one right after the last
        policy = procman.RestartPolicy(restart="always", backoff_initial=0, max_restarts=1000, within=3600)
    else:  # backing off: the descriptors come back while it waits
        policy = procman.RestartPolicy(restart="always", backoff_initial=0.5, max_restarts=20, within=3600)
    m = procman.Manager(on_event=hook, output=lambda *a: None)
    m.register(Quick("victim"), restart=policy)
    m.start(timeout=60)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Below every descriptor already open: those keep working, no new one can be made.
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
    os.kill(m.status()["victim"].pid, signal.SIGKILL)
    if mode == "tight":
        ok = gave_up.wait(60)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print("GAVE_UP", ok, m.status()["victim"].state.value, flush=True)
        m.restart("victim", timeout=60)  # by hand, now that descriptors are back
    else:
        ok = failed_spawn.wait(60)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print("FAILED_SPAWN", ok, flush=True)
        print("READY_AGAIN", ready_again.wait(60), flush=True)
    print("STATE", m.status()["victim"].state.value, flush=True)
    m.close()
    """
)


@pytest.mark.parametrize("mode", ["tight", "backoff"])
def test_a_spawn_failure_is_a_failed_start_under_the_policy(mode: str, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(SPAWN_FAILS.format(tests=str(TESTS)))
    res = subprocess.run(
        [sys.executable, str(script), mode],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=BOUND * 4,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    out = res.stdout
    assert "RecursionError" not in out + res.stderr, res.stderr[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
    events = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("EVENT ")]
    spawn_failures = [e for e in events if e.startswith("exited 'spawn failed")]
    # every failed attempt is an event carrying the cause, EMFILE
    assert spawn_failures and all(e.endswith("OSError:24") for e in spawn_failures), events[-5:]
    if mode == "tight":
        # the policy's limit: 1000 restarts (the first one after the kill), then it gives up
        assert len(spawn_failures) == 1000, len(spawn_failures)
        assert "GAVE_UP True gave-up" in out, out[-2000:]
        assert any(e.startswith("gave-up '1000 restarts within") for e in events), events[-3:]
    else:
        assert "FAILED_SPAWN True" in out and "READY_AGAIN True" in out, out[-2000:]
        assert not any(e.startswith("gave-up") for e in events)
    assert "STATE running" in out, out[-2000:]


MIDWAY = textwrap.dedent(
    """
    import os, resource, sys
    sys.path.insert(0, {tests!r})
    import procman
    from daemons import Quick

    def open_fds():  # fstat, not the listing alone: it shows the descriptor that lists the directory
        found = set()
        for name in os.listdir("/proc/self/fd"):
            try:
                os.fstat(int(name))
            except OSError:
                continue
            found.add(int(name))
        return found

    m = procman.Manager(on_event=None, output=lambda *a: None)
    m.register(Quick("first"))
    m.start(timeout=60)
    before = open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 3  # the lowest limit that leaves exactly 5 descriptors free: 2 pipes fit, the 3rd not
    while limit - len([fd for fd in before if fd < limit]) < 5:
        limit += 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        m.register(Quick("second"))  # the manager runs: this spawns at once
        print("REGISTERED", flush=True)
    except procman.StartError as exc:
        print("START_ERROR", "Too many open files" in str(exc), flush=True)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print("LEAKED", sorted(open_fds() - before), flush=True)
    m.close()
    """
)


def test_a_spawn_failing_midway_releases_the_descriptors_it_made(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(MIDWAY.format(tests=str(TESTS)))
    res = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=BOUND * 2,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "START_ERROR True" in res.stdout, res.stdout
    assert "LEAKED []" in res.stdout, res.stdout


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_the_sigterm_phase_reaches_a_guarded_daemon(method: str, recorder: Recorder) -> None:
    # The stop escalation signals the daemon's group, not its guard alone (which ignores SIGTERM
    # and, SIGKILLed, could not sweep): a daemon whose stop() hangs ends at SIGTERM, not SIGKILL.
    with procman.Manager(start_method=method, on_event=recorder) as m:
        m.register(Stubborn("hangs", ignore_term=False), stop_timeout=0.2, term_timeout=30)
        m.start(timeout=30)
        report = m.stop(timeout=60)
    assert report.outcomes == {"hangs": procman.StopOutcome.TERMINATED}  # not KILLED
