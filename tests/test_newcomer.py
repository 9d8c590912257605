"""A newcomer's first hour: scripts as users write them (no main guard, -c, stdin), run for real.

Each script runs in a fresh interpreter of the project's venv, in a session of its own, with a
bounded timeout; whatever it leaves behind fails the test.
"""

from __future__ import annotations

import inspect
import logging
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import run_script

import workers

METHODS = ["forkserver", "fork", "spawn"]


NO_GUARD = """
    import sys, procman, workers
    print("TOP-LEVEL", flush=True)          # must run once, in the host only
    method = sys.argv[1] if len(sys.argv) > 1 else "forkserver"

    def square(x):
        return x * x

    class Greeter:
        name = "greeter"
        def start(self):
            procman.heartbeat()
            print("hello from", self.name)
        def stop(self):
            pass

    pool = workers.Pool(2, start_method=method)
    print("squares", list(pool.map(square, range(5))))
    print("lambda", pool.submit(lambda: square(7)).result(30))
    pool.shutdown()
    manager = procman.Manager(start_method=method)
    manager.register(Greeter(), watchdog=30)
    manager.start(timeout=30)
    manager.stop(timeout=30)
    manager.close()
"""


@pytest.mark.parametrize("method", METHODS)
def test_a_script_without_main_guard_runs_its_top_level_code_once(tmp_path: Path, method: str) -> None:
    res = run_script(tmp_path, NO_GUARD, args=(method,))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("TOP-LEVEL") == 1, res.stdout
    assert "squares [0, 1, 4, 9, 16]" in res.stdout
    assert "lambda 49" in res.stdout
    assert "greeter | hello from greeter" in res.stdout
    assert "bootstrapping" not in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_scripts_from_stdin_and_dash_c_work(tmp_path: Path, how: str) -> None:
    res = run_script(tmp_path, NO_GUARD, how=how)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("TOP-LEVEL") == 1
    assert "squares [0, 1, 4, 9, 16]" in res.stdout and "greeter | hello from greeter" in res.stdout


REPL_LINES = """
import workers
square = lambda x: x * x
def cube(x): return x ** 3

pool = workers.Pool(2)
print("squares", list(pool.map(square, range(4))), "cube", pool.submit(cube, 3).result(30))
pool.shutdown()
"""

NOTEBOOK = """
import sys, types, workers
# A notebook kernel runs each cell as code compiled from a pseudo-file, in its own __main__ namespace.
main = types.ModuleType("__main__")
sys.modules["__main__"] = main
cell1 = "def double(x):\\n    return 2 * x\\nfactor = 10\\n"
cell2 = (
    "import workers\\npool = workers.Pool(2)\\n"
    "print('cells', pool.submit(lambda: double(factor)).result(30))\\npool.shutdown()\\n"
)
for i, cell in enumerate((cell1, cell2)):
    exec(compile(cell, f"<ipython-input-{i}>", "exec"), main.__dict__)
"""


def test_the_repl_and_a_notebook_style_namespace_work(tmp_path: Path) -> None:
    res = run_script(tmp_path, REPL_LINES, how="repl")
    assert res.returncode == 0, res.stderr
    assert "squares [0, 1, 4, 9] cube 27" in res.stdout
    res = run_script(tmp_path, NOTEBOOK)
    assert res.returncode == 0, res.stderr
    assert "cells 20" in res.stdout


def test_a_lambda_using_an_app_module_sees_the_workers_state_and_never_copies_it(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            STATE = "host"
            BIG = "x" * 10_000_000          # must never travel with a job
            def init():
                global STATE
                STATE = "set by the worker's initializer"
            def state():
                return STATE
            lam = lambda: (STATE, len(BIG))  # defined in the module itself
            """
        )
    )
    res = run_script(
        tmp_path,
        """
        import app, workers
        from workers._serialize import callable_blob
        pool = workers.Pool(1, initializer=app.init)
        job = lambda: app.state()
        print("state:", pool.submit(job).result(30))
        print("module lambda:", pool.submit(app.lam).result(30))
        print("sizes:", len(callable_blob(job)), len(callable_blob(app.lam)))
        pool.shutdown()
        """,
    )
    assert res.returncode == 0, res.stderr
    assert "state: set by the worker's initializer" in res.stdout
    assert 'module lambda: ("set by the worker\'s initializer", 10000000)' in res.stdout
    sizes = [int(x) for x in res.stdout.split("sizes:")[1].split()]
    assert max(sizes) < 10_000, sizes


def test_a_main_job_using_a_local_module_holding_a_struct(tmp_path: Path) -> None:
    (tmp_path / "codec.py").write_text(
        'import struct\nHDR = struct.Struct("<I")\ndef pack(n):\n    return HDR.pack(n)\n'
    )
    res = run_script(
        tmp_path,
        """
        import workers, codec
        from codec import HDR

        def frame(n):                      # defined in __main__: travels by value
            return codec.pack(n) + HDR.pack(n + 1)

        with workers.Pool(2) as pool:
            print(pool.submit(frame, 1).result(30))
        """,
    )
    assert res.returncode == 0, res.stderr
    assert "b'\\x01\\x00\\x00\\x00\\x02\\x00\\x00\\x00'" in res.stdout


def test_what_cannot_be_sent_is_named_with_the_fix_in_a_few_lines(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import socket, workers
        CONN = socket.socket()

        def guarded():
            return CONN.fileno()

        pool = workers.Pool(1)
        try:
            pool.submit(guarded)
        except workers.SerializationError as exc:
            print("MESSAGE<<" + str(exc) + ">>")
            print("CAUSE", type(exc.__cause__).__name__)
        print("still works:", pool.submit(abs, -3).result(30))
        pool.shutdown()
        """,
    )
    assert res.returncode == 0, res.stderr
    message = res.stdout.split("MESSAGE<<")[1].split(">>")[0]
    assert "__main__.guarded" in message
    assert "global 'CONN'" in message and "socket" in message
    assert "Fix:" in message
    assert len(message.splitlines()) <= 6
    assert "CAUSE " in res.stdout and "CAUSE NoneType" not in res.stdout
    assert "still works: 3" in res.stdout


def test_main_classes_come_back_as_the_hosts_own(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import workers

        class Point:
            def __init__(self, x):
                self.x = x

        class Refused(Exception):
            pass

        def make(x):
            return Point(x)

        def refuse():
            raise Refused("no")

        with workers.Pool(1) as pool:
            p = pool.submit(make, 3).result(30)
            print("isinstance", isinstance(p, Point), p.x)
            try:
                pool.submit(refuse).result(30)
            except Refused as exc:
                print("caught", exc)
        """,
    )
    assert res.returncode == 0, res.stderr
    assert "isinstance True 3" in res.stdout and "caught no" in res.stdout


def test_prints_and_crash_tracebacks_reach_the_terminal_without_logging(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import threading, time, procman, workers

        def chatty(i):
            for j in range(100):
                print(f"line {i}.{j}")
            return i

        with workers.Pool(2) as pool:
            assert sum(pool.map(chatty, range(200))) == sum(range(200))

        class Fragile:
            name = "fragile"
            def start(self):
                threading.Thread(target=self.crash).start()
            def crash(self):
                time.sleep(0.2)
                raise RuntimeError("lost the broker")
            def stop(self):
                pass

        with procman.Manager() as manager:
            manager.register(Fragile(), restart="never")
            manager.start(timeout=30)
            for _ in range(300):
                if manager.status()["fragile"].state.value != "running":
                    break
                time.sleep(0.05)
        """,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    job_lines = [line for line in res.stdout.splitlines() if line.startswith("chatty | line ")]
    assert len(job_lines) == 20_000
    assert "fragile | Traceback (most recent call last):" in res.stderr
    assert "fragile | RuntimeError: lost the broker" in res.stderr


def test_output_can_go_to_a_callable_or_logging(caplog: pytest.LogCaptureFixture) -> None:
    got: list[tuple[str, str, str]] = []
    done = threading.Event()

    def hook(source: str, stream: str, line: str) -> None:
        got.append((source, stream, line))
        if line == "bye":
            done.set()

    with workers.Pool(1, output=hook) as pool:
        pool.submit(print, "bye").result(30)
        assert done.wait(10)
    assert ("print", "stdout", "bye") in got
    caplog.set_level(logging.INFO)
    with workers.Pool(1, output="logging") as pool:
        pool.submit(print, "to logging").result(30)
    records = [r for r in caplog.records if r.getMessage() == "to logging"]
    assert records and records[0].name == "workers.job.print" and records[0].job == "print"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="output='loud' is not supported"):
        workers.Pool(1, output="loud")  # type: ignore[arg-type]


def _init_fails() -> None:
    raise ConnectionError("database unreachable")


def test_workers_that_cannot_start_break_the_pool_with_the_childs_error_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="workers")
    pool = workers.Pool(4, initializer=_init_fails, on_event=None)
    try:
        with pytest.raises(workers.PoolBroken) as info:
            pool.submit(abs, 1).result(30)
        assert "the initializer _init_fails raised ConnectionError: database unreachable" in str(info.value)
        cause = info.value.__cause__
        assert isinstance(cause, ConnectionError)
        assert "in _init_fails" in str(cause.__cause__)  # the worker's own traceback
        logged = [r for r in caplog.records if "database unreachable" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        with pytest.raises(workers.PoolBroken):
            pool.submit(abs, 1)
    finally:
        pool.shutdown()


def test_shutdown_waits_for_running_jobs_like_concurrent_futures() -> None:
    assert inspect.signature(workers.Pool.shutdown).parameters["timeout"].default is None
    with workers.Pool(1) as pool:
        running = pool.submit(time.sleep, 1.5)
        queued = pool.submit(abs, -2)
    assert running.result(0) is None and queued.result(0) == 2  # done when the block ended


def test_processes_are_named_for_ps(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import os, procman, workers

        class Web:
            name = "web"
            def start(self):
                pass
            def stop(self):
                pass

        def titles():
            out = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            out.append(f.read().split(b"\\0")[0].decode())
                    except OSError:
                        pass
            return out

        import time
        want = {"procman: web", "procman: worker 1 (reports)", "procman: worker 2 (reports)"}
        with procman.Manager() as manager, workers.Pool(2, name="reports") as pool:
            manager.register(Web())
            manager.start(timeout=30)
            pool.submit(abs, 1).result(30)
            deadline = time.monotonic() + 30  # the second worker may still be starting
            while not want <= set(titles()) and time.monotonic() < deadline:
                time.sleep(0.02)
            mine = [t for t in titles() if t.startswith("procman: ")]
            print(sorted(set(mine)))
        """,
    )
    assert res.returncode == 0, res.stderr
    for title in ("procman: web", "procman: worker 1 (reports)", "procman: worker 2 (reports)"):
        assert f"'{title}'" in res.stdout, res.stdout
    assert "'procman: forkserver'" in res.stdout


def test_a_script_failing_right_after_making_a_pool_exits_with_only_its_own_error(tmp_path: Path) -> None:
    # The pool's workers are still starting when the script dies; the exit hooks must stop them
    # before multiprocess removes the forkserver's socket (the race showed ~1 run in 4).
    for _ in range(4):
        res = run_script(
            tmp_path,
            """
            import workers
            pool = workers.Pool(2)
            pool.submit(lambda: None)
            raise SystemExit("the script's own error")
            """,
        )
        assert res.returncode == 1
        assert res.stderr.strip() == "the script's own error", res.stderr


def test_a_workers_job_output_sends_whole_lines_tagged_with_the_job() -> None:
    from procman._child import wire as _wire
    from procman._child.worker_loop import OUT_HEAD, OUT_MAX, JobOutput

    class Chan:
        def __init__(self) -> None:
            self.frames: list[tuple[int, int, str]] = []

        def send_raw(self, frame: bytes) -> None:
            body = next(_wire.FrameReader().feed(frame))
            job_id, stream = OUT_HEAD.unpack_from(body, 1)
            self.frames.append((job_id, stream, bytes(body[1 + OUT_HEAD.size :]).decode()))

    chan = Chan()
    out = JobOutput(chan, 1, 1)  # type: ignore[arg-type]
    out.job_id = 7
    for _ in range(1000):
        out.write(".")
    assert chan.frames == []  # no newline yet: nothing sent
    out.write("!\nsecond\nthird")
    assert chan.frames == [(7, 1, "." * 1000 + "!\nsecond")]
    out.end_line()  # the job ended: its partial line goes too
    assert chan.frames[-1] == (7, 1, "third")
    out.write("x" * (OUT_MAX + 10))  # a line without end is sent in pieces, never held without bound
    assert sum(len(t) for _, _, t in chan.frames[2:]) == OUT_MAX + 10
    assert out.fileno() == 1 and out.writable()


def test_fork_is_warned_about_once_in_our_words(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import warnings, procman, workers
        warnings.simplefilter("default")      # as -W default / pytest: DeprecationWarnings shown
        pools = [workers.Pool(1, start_method="fork") for _ in range(2)]
        print([p.submit(abs, -i).result(30) for i, p in enumerate(pools)])
        with procman.Manager(start_method="fork") as manager:
            pass
        for p in pools:
            p.shutdown()
        """,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("RuntimeWarning: start_method='fork'") == 1, res.stderr
    assert "script.py:4: RuntimeWarning" in res.stderr  # points at the user's own line
    assert "start_method='forkserver'" in res.stderr and "multi-threaded" not in res.stderr


def test_the_default_pool_size_is_the_cpus_this_process_may_use() -> None:
    from workers._pool import default_workers

    expected = os.process_cpu_count() if hasattr(os, "process_cpu_count") else len(os.sched_getaffinity(0))
    assert default_workers() == expected


def test_jobs_left_running_at_exit_complete(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import time, workers

        def slow_write(path):
            time.sleep(0.5)
            with open(path, "w") as f:
                f.write("done")

        pool = workers.Pool(1)
        pool.submit(slow_write, "running.txt")
        pool.submit(slow_write, "queued.txt")
        pool.shutdown(wait=False)              # and then the script ends: the jobs still complete
        other = workers.Pool(1)
        other.submit(slow_write, "never-shut-down.txt")
        print("script ended", flush=True)
        """,
    )
    assert res.returncode == 0, res.stderr
    for name in ("running.txt", "queued.txt", "never-shut-down.txt"):
        assert (tmp_path / name).read_text() == "done", name


def test_long_lines_are_cut_between_characters_and_no_marker_leaks(tmp_path: Path) -> None:
    res = run_script(
        tmp_path,
        """
        import os, sys, workers

        def long_line():
            print("é" * 100_000)           # 200,000 bytes: sent in pieces
            return os.environ.get("_PROCMAN_FORKSERVER_PARENT")

        with workers.Pool(1) as pool:
            marker = pool.submit(long_line).result(30)
        print("marker:", marker)  # after shutdown, which writes out every pending line first
        """,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    job_text = "".join(line.split(" | ", 1)[1] for line in lines if line.startswith("long_line |"))
    assert job_text == "é" * 100_000  # no U+FFFD where the pieces meet
    assert "marker: None" in res.stdout
