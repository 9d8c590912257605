"""Operating a running procman as a supervisorctl or pm2 user does: start, signal, reload, jobs,
run-now, pause, resume, logs -f, metrics (socket and HTTP), top (in tmux), env_file, unbuffered
command output, autostart and max_memory_mb. Each through the real `procman` process and socket."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import pid_alive, wait_until
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from test_cli import READY, Procman, _env

Start = Callable[[str], Procman]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``procman run app.toml --socket ...`` in ``tmp_path``, stopped at the end of the test."""
    started: list[Procman] = []

    def run(text: str) -> Procman:
        config = tmp_path / "app.toml"
        config.write_text(text)
        p = Procman(config, tmp_path / "ctl.sock", _env())
        started.append(p)
        p.wait_line(READY)
        return p

    yield run
    for p in started:
        p.close()


def _pids(p: Procman) -> dict[str, int | None]:
    return {d["name"]: d["pid"] for d in p.status()["daemons"]}


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


# -- reload -------------------------------------------------------------------------------------

BEFORE = """
[daemons.keep]
factory = "cli_app:Quick"
kwargs = { greeting = "keep-up" }

[daemons.change]
factory = "cli_app:Quick"
kwargs = { greeting = "change-v1" }

[daemons.drop]
command = ["sleep", "600"]

[jobs.old-job]
function = "cli_app:square"
args = [2]
every = "1h"
"""

AFTER = """
[daemons.keep]
factory = "cli_app:Quick"
kwargs = { greeting = "keep-up" }

[daemons.change]
factory = "cli_app:Quick"
kwargs = { greeting = "change-v2" }

[daemons.added]
factory = "cli_app:Quick"
kwargs = { greeting = "added-up" }
depends_on = ["change"]

[jobs.new-job]
function = "cli_app:square"
args = [3]
every = "1h"
"""


def test_reload_adds_removes_and_restarts_only_what_changed(start: Start, tmp_path: Path) -> None:
    p = start(BEFORE)
    before = _pids(p)
    drop_pid = before["drop"]
    assert drop_pid is not None
    (tmp_path / "app.toml").write_text(AFTER)
    out = p.ctl("reload")
    assert out.returncode == 0, out.stderr
    assert "daemons added: added" in out.stdout
    assert "daemons removed: drop" in out.stdout
    assert "daemons changed: change" in out.stdout
    assert "daemons unchanged: keep" in out.stdout
    assert "jobs added: new-job" in out.stdout and "jobs removed: old-job" in out.stdout
    after = _pids(p)
    assert after["keep"] == before["keep"]  # untouched: the same process
    assert after["change"] not in (None, before["change"])
    assert after["added"] is not None
    assert "drop" not in after
    wait_until(lambda: not pid_alive(drop_pid), what="the removed daemon's process gone")
    p.wait_line(r"change +\| change-v2")
    jobs = orjson.loads(p.ctl("jobs", "--json").stdout)
    assert [j["name"] for j in jobs] == ["new-job"]
    assert jobs[0]["trigger"] == "every 3600s"

    # A file with a mistake changes nothing, and says why.
    (tmp_path / "app.toml").write_text(AFTER + "\n[daemons.broken]\nfactory = 'cli_app:Nope'\n")
    out = p.ctl("reload")
    assert out.returncode == 1
    assert "nothing changed" in out.stderr and "[daemons.broken] factory" in out.stderr
    assert _pids(p) == after

    # Nothing changed: nothing restarts.
    (tmp_path / "app.toml").write_text(AFTER)
    out = p.ctl("reload")
    assert out.returncode == 0 and "nothing changed" in out.stdout
    assert _pids(p) == after


# -- start, signal, autostart, jobs ------------------------------------------------------------------

COMMANDS = """
[daemons.ticker]
factory = "cli_app:Ticker"
kwargs = { every = 0.2 }

[daemons.later]
command = ["sleep", "600"]
autostart = false

[jobs.counted]
function = "cli_app:note_run"
args = ["{runs}"]
every = "1h"
"""


def test_start_signal_and_the_job_commands(start: Start, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    p = start(COMMANDS.replace("{runs}", str(runs)))
    # autostart = false: stopped, and not counted as a failure by `status`
    st = p.status(code=0)
    later = next(d for d in st["daemons"] if d["name"] == "later")
    assert later["state"] == "stopped" and later["pid"] is None and later["autostart"] is False
    out = p.ctl("start", "later")
    assert out.returncode == 0 and "later: started (pid" in out.stdout, out
    out = p.ctl("start", "later")
    assert out.returncode == 0 and "already running" in out.stdout
    assert p.ctl("start", "nope").returncode == 1

    out = p.ctl("signal", "ticker", "USR1")
    assert out.returncode == 0, out.stderr
    p.wait_line(r"ticker +\| got signal SIGUSR1")
    out = p.ctl("signal", "ticker", "SIGBOGUS")
    assert out.returncode == 1 and "unknown signal 'SIGBOGUS'" in out.stderr
    out = p.ctl("signal", "counted", "HUP")
    assert out.returncode == 1 and "is a timed job, not a daemon" in out.stderr

    jobs = orjson.loads(p.ctl("jobs", "--json").stdout)
    assert [(j["name"], j["trigger"], j["state"], j["runs"]) for j in jobs] == [
        ("counted", "every 3600s", "active", 0)
    ]
    table = p.ctl("jobs").stdout
    assert "counted" in table and "every 3600s" in table and "in 59m" in table
    assert p.ctl("run-now", "counted").returncode == 0
    wait_until(lambda: runs.exists() and runs.read_text().count("run") == 1, what="the run-now run")

    def counted() -> dict[str, Any]:
        row: dict[str, Any] = orjson.loads(p.ctl("jobs", "--json").stdout)[0]
        return row

    wait_until(lambda: counted()["runs"] == 1, what="the run counted")  # its result reached procman
    ran = counted()
    assert ran["last_outcome"] == "ok" and ran["lateness_mean"] >= 0
    out = p.ctl("pause", "counted")
    assert out.returncode == 0 and "(paused)" in out.stdout
    assert orjson.loads(p.ctl("jobs", "--json").stdout)[0]["state"] == "paused"
    assert p.ctl("resume", "counted").returncode == 0
    assert orjson.loads(p.ctl("jobs", "--json").stdout)[0]["state"] == "active"
    out = p.ctl("pause", "ticker")
    assert out.returncode == 1 and "'ticker' is a daemon, not a job" in out.stderr
    out = p.ctl("run-now", "nope")
    assert out.returncode == 1 and "no job named 'nope' (jobs: counted)" in out.stderr


# -- logs -f -------------------------------------------------------------------------------------

FOLLOW = """
[daemons.one]
factory = "cli_app:Ticker"
kwargs = { every = 0.05, tag = "one-tick" }

[daemons.two]
factory = "cli_app:Ticker"
kwargs = { every = 0.05, tag = "two-tick" }

[daemons.three]
factory = "cli_app:Ticker"
kwargs = { every = 0.05, tag = "three-tick" }
"""


def _follow(p: Procman, *names: str) -> subprocess.Popen[str]:
    assert p.sock is not None
    return subprocess.Popen(
        [sys.executable, "-m", "procman", "logs", "-f", *names, "--socket", str(p.sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=p.env,
    )


def test_logs_follow_prefixes_the_chosen_sources_until_procman_exits(start: Start) -> None:
    p = start(FOLLOW)
    follower = _follow(p, "one", "two")
    try:
        assert follower.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            any("one-tick" in x for x in seen) and sum("two-tick" in x for x in seen) >= 5
        ):
            seen.append(follower.stdout.readline().rstrip("\n"))
        assert any(x.startswith("one     | ") and "one-tick" in x for x in seen), seen
        assert any(x.startswith("two     | ") and "two-tick" in x for x in seen), seen
        assert not any("three-tick" in x for x in seen)  # not asked for
        numbers = [int(x.rsplit(" ", 1)[1]) for x in seen if "two-tick" in x]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # none lost, in order
        # procman stops: the follower says so and exits 0
        p.ctl("stop")
        rest, _ = follower.communicate(timeout=30)
        assert follower.returncode == 0
        assert "procman is stopping; end of the log" in rest
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert p.wait_exit() == 0


def test_logs_without_follow_needs_one_name(start: Start) -> None:
    p = start(FOLLOW)
    out = p.ctl("logs", "one", "two")
    assert out.returncode == 2 and "give one NAME" in out.stderr
    out = p.ctl("logs", "-f", "nope")
    assert out.returncode == 1 and "no daemon or job named 'nope'" in out.stderr


# -- metrics -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


METRICS = """
[procman]
metrics = {port}

[daemons.steady]
factory = "cli_app:Quick"

[daemons.flaky]
factory = "cli_app:Ticker"
restart = "always"
backoff = {{ initial = 0.05 }}

[jobs.squares]
function = "cli_app:square"
args = [4]
every = "0.2s"
"""


def test_metrics_parse_and_match_status_over_the_socket_and_http(start: Start) -> None:
    port = _free_port()
    p = start(METRICS.format(port=port))
    p.ctl("signal", "flaky", "TERM")  # the daemon's process dies of it: a restart, reason "signal"
    wait_until(lambda: any(d["restarts"] == 1 and d["state"] == "running" for d in p.status()["daemons"]))
    wait_until(lambda: p.status()["jobs"][0]["runs"] >= 2, what="two runs of the job")
    out = p.ctl("metrics")
    assert out.returncode == 0
    found = _samples(out.stdout)
    status = p.status(code=0)
    by_name = {d["name"]: d for d in status["daemons"]}
    for name, d in by_name.items():
        assert found[("procman_daemon_up", frozenset({("daemon", name)}))] == 1
        restarts = sum(
            v
            for (metric, labels), v in found.items()
            if metric == "procman_daemon_restarts_total" and ("daemon", name) in labels
        )
        assert restarts == d["restarts"]
    assert (
        found[("procman_daemon_restarts_total", frozenset({("daemon", "flaky"), ("reason", "signal")}))] == 1
    )
    runs = found[("workers_job_runs_total", frozenset({("job", "squares"), ("outcome", "ok")}))]
    assert runs >= 2
    assert found[("workers_pool_workers", frozenset())] == status["pool"]["workers"]
    assert not any(k == "pid" for _, labels in found for k, _v in labels)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert _samples(body)[("procman_daemon_up", frozenset({("daemon", "steady")}))] == 1
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as resp:
        over_http = orjson.loads(resp.read())
    assert {d["name"]: d["pid"] for d in over_http["daemons"]} == {n: d["pid"] for n, d in by_name.items()}
    for method in ("POST", "DELETE"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method=method, data=b""),
                timeout=10,
            )
        assert info.value.code == 405  # read-only: nothing is controlled over HTTP
        info.value.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/stop", timeout=10)
    assert info.value.code == 404
    info.value.close()


def test_a_busy_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "app.toml"
        config.write_text(f"[procman]\nmetrics = {port}\n\n[daemons.a]\nfactory = 'cli_app:Quick'\n")
        p = Procman(config, tmp_path / "ctl.sock", _env())
        try:
            assert p.wait_exit() == 2
        finally:
            p.close()
    assert any(f"cannot serve metrics on 127.0.0.1:{port}" in x for x in p.lines), p.lines


# -- top -------------------------------------------------------------------------------------------

TOP = """
[daemons.alpha]
factory = "cli_app:Ticker"
kwargs = { every = 0.2, tag = "alpha-tick" }

[daemons.beta]
factory = "cli_app:Quick"
kwargs = { greeting = "beta-up" }

[jobs.squares]
function = "cli_app:square"
args = [4]
every = "1h"
"""


def test_top_prints_a_plain_table_when_not_on_a_terminal(start: Start) -> None:
    p = start(TOP)
    out = p.ctl("top", "--count", "2", "--interval", "0.1")
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"^DAEMON +STATE +PID", out.stdout, re.M)) == 2
    assert "alpha" in out.stdout and "beta" in out.stdout and "squares" in out.stdout
    assert "pool: " in out.stdout
    assert "LATE (MEAN)" in out.stdout  # each job's lateness column


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_in_a_terminal_renders_and_its_keys_act(start: Start, tmp_path: Path) -> None:
    p = start(TOP)
    before = _pids(p)
    session = f"pmtop{int(time.time() * 1000) % 10**8}"
    socket_arg = str(p.sock)
    tmux = ["tmux", "-L", session]
    env = {**p.env, "TERM": "xterm"}
    cmd = f"{sys.executable} -m procman top --socket {socket_arg} --interval 0.2"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "40", cmd], env=env, check=True
    )

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True
        ).stdout

    try:
        wait_until(lambda: "DAEMON" in screen() and "beta" in screen(), what="top's first screen")
        text = screen()
        assert re.search(r"^alpha +running", text, re.M), text
        assert "squares" in text and "pool:" in text
        subprocess.run([*tmux, "send-keys", "-t", session, "j"], check=True)  # choose beta
        subprocess.run([*tmux, "send-keys", "-t", session, "r"], check=True)  # restart it
        wait_until(lambda: _pids(p)["beta"] not in (None, before["beta"]), what="beta restarted by top")
        assert _pids(p)["alpha"] == before["alpha"]
        wait_until(lambda: "beta: " in screen(), what="top reports the restart")
        subprocess.run([*tmux, "send-keys", "-t", session, "k"], check=True)  # back to alpha
        subprocess.run([*tmux, "send-keys", "-t", session, "l"], check=True)  # its log
        wait_until(lambda: "log of alpha" in screen() and "alpha-tick" in screen(), what="alpha's log")
        subprocess.run([*tmux, "send-keys", "-t", session, "x"], check=True)  # any key: back
        wait_until(lambda: "DAEMON" in screen(), what="the table again")
        subprocess.run([*tmux, "send-keys", "-t", session, "s"], check=True)  # stop alpha
        wait_until(
            lambda: next(d for d in p.status()["daemons"] if d["name"] == "alpha")["state"] == "stopped",
            what="alpha stopped by top",
        )
        subprocess.run([*tmux, "send-keys", "-t", session, "S"], check=True)  # start it again
        wait_until(
            lambda: next(d for d in p.status()["daemons"] if d["name"] == "alpha")["state"] == "running",
            what="alpha started by top",
        )
        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True)
        wait_until(
            lambda: (
                subprocess.run(
                    [*tmux, "has-session", "-t", session], check=False, capture_output=True
                ).returncode
                != 0
            ),
            what="top quit",
        )
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)


# -- env_file, unbuffered commands, max_memory_mb ------------------------------------------------------

PROGRAMS = """
[daemons.printer]
command = ["{python}", "-c", "{printer}"]
env_file = "app.env"
env = {{ BOTH = "from-table" }}

[daemons.hog]
command = ["{python}", "-c", "{hog}"]
max_memory_mb = 100
restart = "always"
backoff = {{ initial = 0.05 }}
max_restarts = 100
"""


def test_env_file_unbuffered_output_and_max_memory(start: Start, tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("# a comment\nexport FROM_FILE='file value'\nBOTH=from-file\n")
    printer = "import os, time; print('env', os.environ['FROM_FILE'], os.environ['BOTH']); time.sleep(600)"
    # 120 MB, every page touched: resident
    hog = "import time; x = bytearray(120 * 2**20); x[::4096] = b'x' * (len(x) // 4096); time.sleep(600)"
    p = start(PROGRAMS.format(python=sys.executable, printer=printer, hog=hog))
    # The program never flushes: its line shows only because PYTHONUNBUFFERED=1 is the default.
    p.wait_line(r"printer +\| env file value from-table")
    p.wait_line(r"hog +\| killed .*over max_memory_mb = 100")
    wait_until(
        lambda: (
            next(d for d in p.status()["daemons"] if d["name"] == "hog")["restarts_by_reason"].get(
                "memory", 0
            )
            >= 1
        ),
        what="a restart counted as memory",
    )


# -- log files -------------------------------------------------------------------------------------

LOGGED = """
[daemons.chatty]
factory = "cli_app:Ticker"
kwargs = { every = 0.002, tag = "line" }
log_file = "logs/chatty.log"
log_size = "2KB"
log_count = 3
"""


def test_log_files_rotate_within_size_times_count_and_lose_no_line(start: Start, tmp_path: Path) -> None:
    p = start(LOGGED)
    p.wait_line(r"chatty +\| line 400$")
    assert p.ctl("stop").returncode == 0
    assert p.wait_exit() == 0
    logs = tmp_path / "logs"
    files = sorted(logs.iterdir())
    assert [f.name for f in files] == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all(f.stat().st_size <= 2048 for f in files)  # so at most 3 x 2 KB on disk
    ordered = [logs / "chatty.log.2", logs / "chatty.log.1", logs / "chatty.log"]
    lines = [line for f in ordered for line in f.read_text().splitlines()]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ", line) for line in lines)
    ticks = [int(m.group(1)) for line in lines if (m := re.search(r" line (\d+)$", line))]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # consecutive across the rotations
    assert ticks[0] > 1  # the oldest went with the files beyond log_count
    assert lines[-1].endswith("exited EXIT(0)") or lines[-1].endswith(
        "stopped (stopped)"
    )  # it outlives procman


# -- instances, rolling restart --------------------------------------------------------------------

INSTANCES = """
[daemons.web]
factory = "cli_app:SlowReady"
kwargs = { delay = 0.3 }
instances = 3

[daemons.greeter]
factory = "cli_app:Quick"
kwargs = { greeting = "hello from {instance}" }
instances = 2
depends_on = ["web"]
"""


def test_instances_and_a_rolling_restart_never_has_two_down(start: Start) -> None:
    import threading

    from procman.cli.control import request

    p = start(INSTANCES)
    before = _pids(p)
    assert sorted(before) == ["greeter-0", "greeter-1", "web-0", "web-1", "web-2"]
    p.wait_line(r"greeter-0 +\| hello from 0 ")
    p.wait_line(r"greeter-1 +\| hello from 1 ")
    assert p.sock is not None
    sock = p.sock
    down_counts: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            st = request(sock, {"cmd": "status"}, 10)
            web = [d for d in st["daemons"] if d["name"].startswith("web-")]
            down_counts.append(sum(d["state"] != "running" for d in web))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = p.ctl("restart", "web", "--rolling")
    finally:
        done.set()
        watcher.join(30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("restarted (pid") == 3
    after = _pids(p)
    assert all(after[f"web-{i}"] not in (None, before[f"web-{i}"]) for i in range(3))
    assert after["greeter-0"] == before["greeter-0"]  # only the group asked for
    assert max(down_counts) == 1, down_counts  # one at a time
    assert 1 in down_counts  # and the watcher did see each one down (0.3 s to be ready)
    # the group's name works for the other commands too
    out = p.ctl("stop", "greeter")
    assert out.returncode == 0 and "greeter-0 stopped" in out.stdout and "greeter-1 stopped" in out.stdout
    out = p.ctl("start", "greeter")
    assert out.returncode == 0 and "started" in out.stdout
