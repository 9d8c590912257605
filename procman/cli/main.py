"""The ``procman`` command.

::

    procman run FILE.toml          run the file's daemons and jobs until Ctrl-C / SIGTERM
    procman check FILE.toml        check the file, start nothing
    procman status [NAME] [--json] daemons and jobs of a running procman (exit 3: a daemon is down)
    procman start NAME             start a stopped daemon (or one with autostart = false)
    procman restart NAME [--rolling] restart one daemon (gracefully)
    procman stop [NAME]            stop one daemon, or everything (procman then exits)
    procman signal NAME SIG        send a signal to a daemon (its program, for a command)
    procman reload                 re-read the file: add, remove, restart what changed
    procman logs [NAME...] [-n N] [-f]  the last lines of a daemon or job; -f follows them
    procman jobs [--json]          the timed jobs: trigger, next run, last outcome
    procman run-now|pause|resume JOB
    procman metrics                the metrics, as OpenMetrics text
    procman top                    a live view: daemons, jobs, the pool; keys act on a daemon
    procman --version

The control commands find the running procman by ``--socket PATH``, by ``-c FILE.toml`` (the
socket the file names, else the default socket of that file, named after its absolute path), or,
with neither, the only one running.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .config import load
from .control import (
    ControlError,
    config_key,
    default_socket,
    find_socket,
    request,
    request_stream,
    runtime_dir_text,
)
from .tables import ConfigError
from .toml import parse_toml

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # `procman status`: a daemon is not running (as `systemctl status` for inactive)

DISTRIBUTION = "procworks"


def version_line() -> str:
    """``procman (procworks) X.Y.Z``: the installed distribution's version, else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"procman ({DISTRIBUTION}) {version(DISTRIBUTION)}"
    except PackageNotFoundError:
        from procman import __version__

        return f"procman ({DISTRIBUTION}) {__version__} (not installed: the version of the source tree)"


def _text(*paragraphs: str) -> str:
    """Paragraphs wrapped for a help screen (the help formatter keeps descriptions as they are)."""
    return "\n\n".join(textwrap.fill(para, 78) for para in paragraphs)


def _where_sockets() -> str:
    return (
        "The control commands (status, restart, stop, logs) find the running procman by --socket "
        "PATH, by -c FILE.toml (the socket named by the file's [procman] socket key, else the file's "
        "default socket), or, with neither, the only one running. Default sockets live in "
        f"{runtime_dir_text()} (the first of $XDG_RUNTIME_DIR/procman, $TMPDIR/procman-UID and "
        "~/.procman that is a directory of yours with mode 0700, or can be made one) and are named "
        "after the config file: STEM-HASH.sock, HASH being the first 10 hex digits of the SHA-256 of "
        "the file's absolute path, so two projects that both have an app.toml never share one."
    )


STATUS_CODES = """\
exit status:
  0  every daemon (or NAME) is running
  1  procman answered with an error, e.g. there is no daemon or job NAME
  2  bad usage, or no procman could be reached on that socket
  3  a daemon is not running: starting, backing off, exited, gave up, stopped on purpose
     with `procman stop NAME`, or procman itself is stopping
"""

RUN_CODES = """\
exit status:
  0  everything started and then stopped cleanly
  1  a daemon failed to start, or something had to be terminated or killed at the stop
  2  a bad config file, or its control socket is in use by another procman
"""

CONTROL_CODES = """\
exit status:
  0  done
  1  procman answered with an error (e.g. no such daemon) or did not finish in time
  2  bad usage, or no procman could be reached on that socket
"""


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="procman",
        description="Run daemons and timed jobs in supervised child processes, from a TOML file.",
        epilog=_text(
            _where_sockets(), "Run `procman COMMAND --help` for the options and exit status of each."
        ),
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    run = sub.add_parser(
        "run",
        help="run the daemons and jobs of a config file until Ctrl-C or SIGTERM",
        description=_text(
            "Run the daemons and timed jobs of a config file, each line of output prefixed with its "
            "source. Ctrl-C, SIGTERM or `procman stop` stops everything gracefully; a second Ctrl-C "
            "or SIGTERM kills everything at once."
        ),
        epilog=RUN_CODES,
        formatter_class=fmt,
    )
    run.add_argument("config", metavar="FILE.toml", help="the TOML config file")
    run.add_argument(
        "--socket",
        metavar="PATH",
        help="the control socket to listen on (default: the file's [procman] socket, else "
        f"STEM-HASH.sock in {runtime_dir_text()}; see `procman --help`)",
    )
    run.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the names: auto (on a terminal, unless NO_COLOR is set), always or never "
        "(default: auto)",
    )

    check = sub.add_parser(
        "check",
        help="check a config file without starting anything",
        description=_text(
            "Check a config file (keys, values, imports, factories, dependencies) and start nothing. "
            "Exit status 0 when it is good, 2 with one line naming the mistake when it is not."
        ),
        formatter_class=fmt,
    )
    check.add_argument("config", metavar="FILE.toml", help="the TOML config file")

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "-c",
        "--config",
        metavar="FILE.toml",
        help="the config file of the procman to talk to (finds the socket of that file)",
    )
    where.add_argument("--socket", metavar="PATH", help="the control socket of the procman to talk to")
    where.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for an answer (default: 60)",
    )
    sockets = (
        "Which procman: the one on --socket PATH, else the one running -c FILE.toml (the socket its "
        f"[procman] socket key names, else STEM-HASH.sock in {runtime_dir_text()}, HASH taken from the "
        "file's absolute path), else the only one running."
    )

    status = sub.add_parser(
        "status",
        parents=[where],
        help="show the daemons and jobs of a running procman (exit 3 if a daemon is not running)",
        description=_text(
            "Show the daemons (state, pid, uptime, restarts, last exit) and jobs (runs, last result, "
            "next run) of a running procman, with the absolute path of its config file and its socket.",
            sockets,
        ),
        epilog=STATUS_CODES,
        formatter_class=fmt,
    )
    status.add_argument("name", metavar="NAME", nargs="?", help="only this daemon or job (default: all)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    restart = sub.add_parser(
        "restart",
        parents=[where],
        help="restart a daemon gracefully",
        description=_text(
            "Stop a daemon gracefully, start it again and wait until it is ready (this also revives "
            "a daemon that gave up or was stopped).",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    restart.add_argument("name", metavar="NAME", help="the daemon to restart, or all instances of one")
    restart.add_argument(
        "--rolling",
        action="store_true",
        help="with instances = N: one instance at a time, each ready before the next stops",
    )

    stop = sub.add_parser(
        "stop",
        parents=[where],
        help="stop one daemon, or everything",
        description=_text(
            "Stop one daemon (it stays stopped until `procman restart NAME`), or, without a NAME, "
            "everything: procman then exits, and this command waits for it.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    stop.add_argument("name", metavar="NAME", nargs="?", help="the daemon to stop (default: everything)")

    start = sub.add_parser(
        "start",
        parents=[where],
        help="start a daemon that is not running",
        description=_text(
            "Start a daemon that is not running (stopped with `procman stop NAME`, exited, gave up, "
            "or never started: autostart = false) and wait until it is ready. A running daemon is "
            "left as it is.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    start.add_argument("name", metavar="NAME", help="the daemon to start")

    sig = sub.add_parser(
        "signal",
        parents=[where],
        help="send a signal to a daemon",
        description=_text(
            "Send a signal to a daemon: to a Python daemon's own process, to the program of a "
            "command daemon (e.g. HUP to make it reopen its logs). What follows is the daemon's "
            "business: one that dies of it is restarted under its policy.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    sig.add_argument("name", metavar="NAME", help="the daemon")
    sig.add_argument("signal", metavar="SIG", help="a signal name (HUP, SIGUSR1, ...) or number")

    sub.add_parser(
        "reload",
        parents=[where],
        help="re-read the config file and apply what changed",
        description=_text(
            "Re-read the config file of a running procman and apply it: daemons added are started, "
            "removed ones stopped, changed ones (any key of their table, or their env_file) "
            "restarted; the others keep running untouched, with their pids. Jobs likewise. A file "
            "with a mistake changes nothing: the mistake is printed and the exit status is 1. "
            "Changes to [procman] and [pool] need a restart of procman; reload says so.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )

    jobs = sub.add_parser(
        "jobs",
        parents=[where],
        help="list the timed jobs: trigger, next run, last outcome",
        description=_text(
            "List the schedules and waiting timed jobs of a running procman (with a [store], "
            "every host's): trigger, state, next run, runs and failures, last outcome.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    jobs.add_argument("--json", action="store_true", help="print them as JSON")
    for verb, text in (
        ("run-now", "run a job now, once (its schedule goes on as before)"),
        ("pause", "pause a schedule: no run until it is resumed"),
        ("resume", "resume a paused schedule"),
    ):
        job_cmd = sub.add_parser(
            verb,
            parents=[where],
            help=text,
            description=_text(text[0].upper() + text[1:] + ".", sockets),
            epilog=CONTROL_CODES,
            formatter_class=fmt,
        )
        job_cmd.add_argument("name", metavar="JOB", help="the job's name")

    sub.add_parser(
        "metrics",
        parents=[where],
        help="print the metrics (OpenMetrics text)",
        description=_text(
            "Print the metrics of a running procman as OpenMetrics text: per daemon up, state, "
            "restarts by reason, last exit, start time, memory and CPU of its process group, "
            "heartbeat age; per job runs by outcome, run time and lateness histograms, next run; the "
            "pool's workers, queue and worker restarts. [procman] metrics = PORT serves the same "
            "over HTTP for Prometheus.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )

    top = sub.add_parser(
        "top",
        parents=[where],
        help="a live view of the daemons, jobs and pool",
        description=_text(
            "A live view of a running procman, refreshed every --interval seconds: daemons (state, "
            "pid, uptime, restarts, last exit, CPU %, memory), jobs (next run, last outcome, runs, "
            "lateness) and the pool. On a terminal: up/down (or j/k) choose a daemon, r restarts "
            "it, s stops it, S starts it, l follows its log (any key returns), q quits. Not on a "
            "terminal, it prints the table every --interval seconds (--count times).",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (1)")
    top.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="stop after N refreshes (default: until q/Ctrl-C)",
    )

    logs = sub.add_parser(
        "logs",
        parents=[where],
        help="the last lines of a daemon or job",
        description=_text(
            "Print the last lines of a daemon or job (its output, its starts and exits, a failed "
            "run's traceback) as `procman run` showed them; `pool` and `procman` name the worker "
            "pool and procman itself.",
            sockets,
        ),
        epilog=CONTROL_CODES,
        formatter_class=fmt,
    )
    logs.add_argument(
        "names",
        metavar="NAME",
        nargs="*",
        help="a daemon, a job, `pool` or `procman`; with -f, any number of them (default: all)",
    )
    logs.add_argument(
        "-n", "--lines", type=int, default=None, metavar="N", help="how many lines (default: 100; 10 with -f)"
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new lines as they come, each prefixed with its source, until Ctrl-C or "
        "procman exits",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            cfg = load(args.config)
            print(f"{cfg.path}: ok: {len(cfg.daemons)} daemon(s), {len(cfg.jobs)} job(s)")
            return EXIT_OK
        if args.command == "run":
            return _run(args)
        return _control(args)
    except ConfigError as exc:
        print(f"procman: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ControlError as exc:
        print(f"procman: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from .console import use_color
    from .runner import run

    cfg = load(args.config)
    socket_path = Path(args.socket) if args.socket else cfg.socket or default_socket(cfg.path)
    return run(cfg, socket_path=socket_path, color=use_color(sys.stdout, args.color))


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        # Only the [procman] socket key: loading the whole file would import the app and call its
        # factories in this client. The path is resolved as `procman run` resolves it.
        cfg_path = Path(args.config)
        try:
            data = parse_toml(cfg_path, cfg_path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{cfg_path}: cannot read it: {exc}") from None
        sock = data.get("procman", {}).get("socket") if isinstance(data.get("procman"), dict) else None
        if isinstance(sock, str) and sock:
            return config_key(cfg_path).parent / sock
        return default_socket(cfg_path)
    return find_socket()


def _control(args: argparse.Namespace) -> int:
    path = _socket(args)
    command = {
        "status": _status,
        "restart": _restart,
        "stop": _stop,
        "logs": _logs,
        "start": _start,
        "signal": _signal,
        "reload": _reload,
        "jobs": _jobs,
        "run-now": _job_action,
        "pause": _job_action,
        "resume": _job_action,
        "metrics": _metrics,
        "top": _top,
    }[args.command]
    return command(args, path)


def not_running(resp: dict[str, Any]) -> list[str]:
    """The daemons of a status answer that are not running, as ``name (state)``."""
    return [
        f"{d['name']} ({d['state']})"
        for d in resp.get("daemons", [])
        # one with autostart = false is stopped until asked: that is not a failure
        if d.get("state") != "running" and not (d.get("autostart") is False and d.get("state") == "stopped")
    ]


def _status(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "status"}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    if args.name is not None:
        daemons = [d for d in resp.get("daemons", []) if d["name"] == args.name]
        jobs = [j for j in resp.get("jobs", []) if j["name"] == args.name]
        if not daemons and not jobs:
            known = [r["name"] for r in resp.get("daemons", []) + resp.get("jobs", [])]
            return _fail({"error": f"no daemon or job named {args.name!r} (known: {', '.join(known)})"})
        resp = {**resp, "daemons": daemons, "jobs": jobs}
    if args.json:
        sys.stdout.write(orjson.dumps(resp, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_status(resp))
    return EXIT_NOT_RUNNING if not_running(resp) or resp.get("stopping") else EXIT_OK


def _restart(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "restart", "name": args.name, "rolling": args.rolling}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    for r in resp.get("instances", [resp]):
        print(f"{r['name']}: restarted (pid {r['pid']}; the old process {r['previous']})")
    return EXIT_OK


def _stop(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "stop", "name": args.name}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    if args.name:
        print(f"{resp['name']}: {resp['outcome']}")
        return EXIT_OK
    # Everything stops; wait (bounded) until procman is gone, as `systemctl stop` does.
    deadline = time.monotonic() + args.timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if path.exists():
        print(f"procman: still stopping after {args.timeout:g}s", file=sys.stderr)
        return EXIT_FAILED
    print("stopped")
    return EXIT_OK


def _logs(args: argparse.Namespace, path: Path) -> int:
    if not args.follow:
        if len(args.names) != 1:
            print("procman: logs: give one NAME (or follow several with -f)", file=sys.stderr)
            return EXIT_USAGE
        lines = 100 if args.lines is None else args.lines
        resp = request(path, {"cmd": "logs", "name": args.names[0], "lines": lines}, args.timeout)
        if not resp.get("ok"):
            return _fail(resp)
        for line in resp["lines"]:
            print(line)
        return EXIT_OK
    message = {
        "cmd": "logs",
        "follow": True,
        "names": args.names or None,
        "lines": 10 if args.lines is None else args.lines,
    }
    stream = request_stream(path, message, args.timeout)
    head = next(stream)
    if not head.get("ok"):
        return _fail(head)
    width = max([len(n) for n in args.names] + [7])
    try:
        for item in stream:
            print(f"{item.get('name', '?'):<{width}} | {item.get('line', '')}", flush=True)
    except BrokenPipeError:  # `procman logs -f | head`
        return EXIT_OK
    return EXIT_OK


def _start(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "start", "name": args.name}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    if resp["started"]:
        print(f"{resp['name']}: started (pid {resp['pid']})")
    else:
        print(f"{resp['name']}: already {resp['state']} (pid {resp['pid']})")
    return EXIT_OK


def _signal(args: argparse.Namespace, path: Path) -> int:
    sig: str | int = int(args.signal) if args.signal.isdigit() else args.signal
    resp = request(path, {"cmd": "signal", "name": args.name, "signal": sig}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    print(f"{resp['name']}: sent {args.signal} (pid {resp['pid']})")
    return EXIT_OK


def _reload(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "reload"}, args.timeout)
    if "added" not in resp:  # refused: the file has a mistake, nothing changed
        return _fail(resp)
    for what in ("added", "removed", "changed", "unchanged"):
        if resp[what]:
            print(f"daemons {what}: {', '.join(resp[what])}")
    for what, names in resp["jobs"].items():
        if names:
            print(f"jobs {what}: {', '.join(names)}")
    if not (resp["added"] or resp["removed"] or resp["changed"] or any(resp["jobs"].values())):
        print("nothing changed")
    for text in resp.get("not_applied", []):
        print(f"not applied: {text}", file=sys.stderr)
    return EXIT_OK if resp.get("ok") else _fail(resp)


def _jobs(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "jobs"}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    if args.json:
        sys.stdout.write(orjson.dumps(resp["jobs"], option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    sys.stdout.write(format_jobs(resp["jobs"]))
    return EXIT_OK


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    rows = [("JOB", "TRIGGER", "STATE", "NEXT RUN", "RUNS", "FAILED", "LAST OUTCOME")]
    for j in jobs:
        last = j.get("last_outcome") or "-"
        rows.append(
            (
                j["name"],
                j["trigger"],
                j["state"],
                when(j.get("next_run")),
                str(j["runs"]),
                str(j["failures"]),
                last if len(last) <= 50 else last[:47] + "...",
            )
        )
    return _table(rows)


def when(iso: str | None) -> str:
    from datetime import datetime

    if not iso:
        return "-"
    t = datetime.fromisoformat(iso)
    delta = (t if t.tzinfo else t.astimezone()) - datetime.now().astimezone()
    return f"in {_ago(max(0.0, delta.total_seconds()))}"


def table_lines(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """``rows`` (the first one the header) in columns two spaces apart (status, jobs, top)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    return "".join(line + "\n" for line in table_lines(rows))


def _job_action(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": args.command, "name": args.name}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    state = f" ({resp['state']})" if resp.get("state") else ""
    print(f"{resp['name']}: {args.command} done{state}")
    return EXIT_OK


def _metrics(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "metrics"}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    sys.stdout.write(resp["text"])
    return EXIT_OK


def _top(args: argparse.Namespace, path: Path) -> int:
    from .top import top

    if args.interval <= 0:
        print("procman: top: --interval must be > 0", file=sys.stderr)
        return EXIT_USAGE
    return top(path, interval=args.interval, count=args.count, timeout=args.timeout)


def _fail(resp: dict[str, Any]) -> int:
    print(f"procman: {resp.get('error', 'failed')}", file=sys.stderr)
    return EXIT_FAILED


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_status(resp: dict[str, Any]) -> str:
    """The status as a table: one row per daemon, then one per job."""
    rows = [("NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT / LAST RESULT", "NEXT RUN")]
    for d in resp.get("daemons", []):
        last = d.get("last_exit")
        rows.append(
            (
                d["name"],
                "daemon",
                d["state"],
                str(d["pid"]) if d["pid"] is not None else "-",
                _ago(d["uptime"]) if d["uptime"] is not None else "-",
                str(d["restarts"]),
                f"{last['reason']} at {last['time'][11:]}" if last else "-",
                "-",
            )
        )
    for j in resp.get("jobs", []):
        result = j.get("last_error") or j.get("last_result") or "-"
        rows.append(
            (
                j["name"],
                "job",
                j["state"],
                "-",
                "-",
                f"runs {j['runs']}, failed {j['failures']}",
                result if len(result) <= 40 else result[:37] + "...",
                when(j.get("next_run")),
            )
        )
    head = [f"procman pid {resp.get('pid')} since {resp.get('started')}"]
    if resp.get("stopping"):
        head[0] += " (stopping)"
    head.append(f"config {resp.get('config')}")
    if resp.get("socket"):
        head.append(f"socket {resp.get('socket')}")
    lines = head + table_lines(rows)
    down = not_running(resp)
    if down:
        lines.append(f"not running: {', '.join(down)}")
    return "\n".join(lines) + "\n"
