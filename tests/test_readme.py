"""The README is executable: its samples run as written, read from README.md at test time.

Every ```python block runs as a script (``python app.py``), the bash sample that feeds a script on
stdin (``python - <<'EOF'``) runs with that script on stdin, and every ```toml block is checked with
``procman check``. They run on the README's own editable install (this interpreter, outside the
repository) in a session of their own, without ``PYTHONUNBUFFERED`` (as on a bare machine), and each
run must leave no process behind. A sample that waits for Ctrl-C (``manager.run()``) is exercised
once it is up and then gets SIGINT on its whole process group, as a terminal sends it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import session_members

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROCMAN = Path(sys.executable).parent / "procman"

RUN_TIMEOUT = 60.0  # a sample's whole run, or its start when it waits for Ctrl-C
LEFTOVER_GRACE = 10.0  # helpers (the forkserver) exit on their own once the host is gone
RUNS_UNTIL_SIGNAL = re.compile(r"\.run\(\)|run_until_signal\(")
STDIN_SAMPLE = re.compile(r"^(?P<cmd>\S*python3?) - <<'(?P<tag>\w+)'\n(?P<body>.*?\n)(?P=tag)$", re.M | re.S)


# --- the README's fenced blocks -----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, 1-based
    section: str  # the heading it sits under

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-") + f"-L{self.line}"


def readme_blocks() -> list[Block]:
    """Every fenced block of README.md (indented ones too), with the heading it sits under."""
    blocks: list[Block] = []
    section = ""
    fence: tuple[str, str, int] | None = None  # (indent, lang, line)
    body: list[str] = []
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence = (line[: len(line) - len(line.lstrip())], stripped[3:].strip(), number)
                body = []
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif stripped == "```":
            indent, lang, start = fence
            text = "\n".join(b[len(indent) :] if b.startswith(indent) else b for b in body)
            blocks.append(Block(lang, textwrap.dedent(text) + "\n", start, section))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"README.md: the block opened at line {fence[2]} is never closed"
    return blocks


BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]
TOML = [b for b in BLOCKS if b.lang == "toml"]
STDIN = [b for b in BLOCKS if b.lang == "bash" and STDIN_SAMPLE.search(b.body)]


# --- one sample's run ---------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONUNBUFFERED", "PYTHONPATH", "PYTHONSTARTUP", "NOTIFY_SOCKET"):
        env.pop(name, None)
    return env


class Sample:
    """A README sample running in a session of its own, its output collected line by line."""

    def __init__(self, argv: list[str], cwd: Path, stdin: str | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=_env(),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its session id is its pid: every process it starts is found
        )
        self.sid = self.proc.pid
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(
                [f"$ {' '.join(self.argv)}", "--- stdout", *self.stdout, "--- stderr", *self.stderr]
            )

    def wait_line(self, pattern: str, stream: str = "stdout", timeout: float = RUN_TIMEOUT) -> re.Match[str]:
        """The first line of ``stream`` matching ``pattern``, waiting for it (bounded)."""
        lines = self.stdout if stream == "stdout" else self.stderr
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in lines:
                    if m := regex.search(line):
                        return m
                left = deadline - time.monotonic()
                ended = self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)
                if left <= 0 or ended:
                    break
                self._cond.wait(min(left, 0.2))
        code = self.proc.poll()
        why = f"the sample exited with {code}" if code is not None else f"within {timeout}s"
        raise AssertionError(f"no {stream} line matching {pattern!r} ({why})\n{self.output()}")

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        """The exit status (bounded); its output is complete once its helpers have exited."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s\n{self.output()}") from None
        deadline = time.monotonic() + LEFTOVER_GRACE
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        return code

    def assert_nothing_left(self) -> None:
        """No process of this run's session outlives it (its helpers get a short grace)."""
        assert self.proc.poll() is not None, "the sample itself is still running"
        deadline = time.monotonic() + LEFTOVER_GRACE
        while (left := session_members(self.sid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes left behind after {LEFTOVER_GRACE}s: {left}\n{self.output()}"

    def kill(self) -> None:
        """Whatever happened: SIGKILL the whole session, reap the sample, join the readers."""
        for _ in range(3):  # a process may fork while we kill: look again
            pids = session_members(self.sid)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not pids:
                break
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


# --- what a user checks, per sample (by the README section it is in) ----------------------------


def _procman_up(run: Sample) -> None:
    run.wait_line(r"^kafka-consumer +\| consuming$")
    port = run.wait_line(r"^web +\| Serving HTTP on 127\.0\.0\.1 port (\d+) ").group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.status == 200
    run.wait_line(r'^web +\| 127\.0\.0\.1 - - \[.*\] "GET / HTTP/1\.1" 200 -$', stream="stderr")


def _procman_stopped(run: Sample) -> None:
    # Started once, never restarted (the watchdog is fed), and a quiet, graceful stop.
    assert sum("kafka-consumer | consuming" in line for line in run.stdout) == 1, run.output()
    assert not any("Traceback" in line for line in run.stdout + run.stderr), run.output()


def _workers_output(run: Sample) -> None:
    assert run.stdout[0] == "report for 2026-11-22 / report for big", run.output()
    # The next 02:00 in Berlin, in UTC (01:00 in winter, 00:00 in summer); no run yet, no error.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 0[01]:00:00\+00:00 0 None", run.stdout[1]), run.output()
    assert len(run.stdout) == 2, run.output()


def _guardless_output(run: Sample) -> None:
    # The top-level print shows once: no child re-ran the script.
    assert run.stdout == ["top-level code: printed once", "49 from a lambda"], run.output()


def _dask_output(run: Sample) -> None:
    assert run.stdout == [
        "8 simulations",
        "print | half a second later, on a Dask worker",
        "2 threads; True",
    ], run.output()


def _store_output(run: Sample) -> None:
    assert run.stdout == [
        "report | report for today",
        "['nightly'] True",
        "['report'] ['nightly']",
    ], run.output()


def _metrics_output(run: Sample) -> None:
    assert run.stdout == ["49", "['procman_daemon_up{daemon=\"sleeper\"} 1.0']"], run.output()


@dataclass(frozen=True)
class Check:
    output: Callable[[Sample], None]  # after a clean exit
    up: Callable[[Sample], None] | None = None  # for a sample that runs until Ctrl-C: up and working


CHECKS = {
    "procman in one screen": Check(up=_procman_up, output=_procman_stopped),
    "workers in one screen": Check(output=_workers_output),
    "Scripts without a main guard": Check(output=_guardless_output),
    "On a Dask cluster": Check(output=_dask_output),
    "Durable timed jobs and schedules": Check(output=_store_output),
    "The procman command": Check(output=_metrics_output),  # the prometheus_client collectors
}


def _run_python_sample(block: Block, tmp_path: Path) -> None:
    check = CHECKS.get(block.section)
    if block.section == "On a Dask cluster":
        pytest.importorskip("distributed", reason="the Dask sample needs procworks[dask]")
    assert check is not None, (
        f"README.md line {block.line}: a Python sample under {block.section!r}; "
        "say in tests/test_readme.py (CHECKS) what its output must show"
    )
    script = tmp_path / "app.py"
    script.write_text(block.body, encoding="utf-8")
    run = Sample([sys.executable, script.name], tmp_path)
    try:
        if RUNS_UNTIL_SIGNAL.search(block.body):
            assert check.up is not None, f"{block.section!r} runs until Ctrl-C: its Check needs `up`"
            check.up(run)
            os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        code = run.wait()
        assert code == 0, f"exit status {code}\n{run.output()}"
        assert not run.stderr or check.up is not None, f"unexpected stderr\n{run.output()}"
        check.output(run)
        run.assert_nothing_left()
    finally:
        run.kill()


# --- the tests ----------------------------------------------------------------------------------


def test_readme_has_the_samples_this_file_runs() -> None:
    sections = {b.section for b in PYTHON}
    assert set(CHECKS) <= sections, f"sections without their Python sample: {set(CHECKS) - sections}"
    assert TOML, "README.md has no TOML config"
    assert STDIN, "README.md has no `python - <<'EOF'` sample"


def test_samples_run_on_the_readme_install(tmp_path: Path) -> None:
    # The interpreter the samples run with imports this checkout (editable), not another copy.
    code = "import procman, workers; print(procman.__file__); print(workers.__file__)"
    run = Sample([sys.executable, "-c", code], tmp_path)
    try:
        assert run.wait() == 0, run.output()
        assert [Path(p).parent.parent for p in run.stdout] == [ROOT, ROOT], run.output()
        run.assert_nothing_left()
    finally:
        run.kill()


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_sample(block: Block, tmp_path: Path) -> None:
    _run_python_sample(block, tmp_path)


@pytest.mark.parametrize("block", STDIN, ids=[b.id for b in STDIN])
def test_script_on_stdin(block: Block, tmp_path: Path) -> None:
    m = STDIN_SAMPLE.search(block.body)
    assert m is not None
    run = Sample([sys.executable, "-"], tmp_path, stdin=m["body"])
    try:
        assert run.wait() == 0, run.output()
        expected = re.search(r"# (\S+)$", m["body"].rstrip(), re.M)  # the result the sample shows
        assert expected is not None, f"README.md line {block.line}: show the printed result as `# VALUE`"
        assert run.stdout == [expected[1]], run.output()
        assert run.stderr == [], run.output()
        run.assert_nothing_left()
    finally:
        run.kill()


GUARDLESS = next((b for b in PYTHON if b.section == "Scripts without a main guard"), None)


@pytest.mark.parametrize("how", ["file", "-c", "stdin"])
@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_guardless_sample_on_every_start_method(method: str, how: str, tmp_path: Path) -> None:
    # What the README says of that sample: the top-level code runs once, in the host, on every
    # start method, from a file, `python -c` or stdin.
    assert GUARDLESS is not None
    assert GUARDLESS.body.count("workers.Pool(2)") == 1
    code = GUARDLESS.body.replace("workers.Pool(2)", f"workers.Pool(2, start_method={method!r})")
    if how == "file":
        (tmp_path / "app.py").write_text(code, encoding="utf-8")
        run = Sample([sys.executable, "app.py"], tmp_path)
    elif how == "-c":
        run = Sample([sys.executable, "-c", code], tmp_path)
    else:
        run = Sample([sys.executable, "-"], tmp_path, stdin=code)
    try:
        assert run.wait() == 0, run.output()
        _guardless_output(run)
        stderr = run.stderr
        if method == "fork":  # fork copies a threaded host: said once, as the README's versions section says
            # the warning, and the script's line when Python has its source (not for -c or stdin)
            assert len(stderr) <= 2 and "RuntimeWarning: start_method='fork'" in stderr[0], run.output()
            stderr = []
        assert stderr == [], run.output()
        run.assert_nothing_left()
    finally:
        run.kill()


STAND_IN_DAEMON = '''

class {name}:
    """Stands in for the user's daemon: procman calls it with the config's args and kwargs."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def start(self):
        pass

    def stop(self):
        pass
'''

STAND_IN_FUNCTION = '''

def {name}(*args, **kwargs):
    """Stands in for the user's job."""
    return args, kwargs
'''


def write_myapp(config: dict[str, Any], root: Path) -> None:
    """The README's config names the user's own package, ``myapp``: write a stand-in next to it
    providing each factory and function the config names there."""
    for d in config.get("daemons", {}).values():  # the user's own env files, likewise
        if "env_file" in d:
            root.joinpath(d["env_file"]).write_text("# a stand-in for the user's file\nLOG_LEVEL=info\n")
    refs = [(d["factory"], STAND_IN_DAEMON) for d in config.get("daemons", {}).values() if "factory" in d]
    refs += [(j["function"], STAND_IN_FUNCTION) for j in config.get("jobs", {}).values() if "function" in j]
    for ref, template in refs:
        module, _, name = ref.partition(":")
        parts = module.split(".")
        if parts[0] != "myapp":
            continue
        for depth in range(1, len(parts)):
            package = root.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
        with root.joinpath(*parts).with_suffix(".py").open("a", encoding="utf-8") as f:
            f.write(template.format(name=name))


@pytest.mark.parametrize("block", TOML, ids=[b.id for b in TOML])
def test_toml_config_passes_procman_check(block: Block, tmp_path: Path) -> None:
    config = tomllib.loads(block.body)  # valid TOML first of all
    (tmp_path / "app.toml").write_text(block.body, encoding="utf-8")
    write_myapp(config, tmp_path)
    run = Sample([str(PROCMAN), "check", "app.toml"], tmp_path)
    try:
        assert run.wait() == 0, run.output()
        daemons = sum(d.get("instances", 1) for d in config.get("daemons", {}).values())
        jobs = len(config.get("jobs", {}))
        assert run.stdout == [f"app.toml: ok: {daemons} daemon(s), {jobs} job(s)"], run.output()
        run.assert_nothing_left()
    finally:
        run.kill()
