"""The ``procman`` command.

::

    procman run FILE.toml          run the file's daemons and jobs until Ctrl-C / SIGTERM
    procman check FILE.toml        check the file, start nothing
    procman status [NAME] [--json] daemons and jobs of a running procman (exit 3: a daemon is down)
    procman restart NAME           restart one daemon (gracefully)
    procman stop [NAME]            stop one daemon, or everything (procman then exits)
    procman logs NAME [-n N]       the last lines of a daemon or job
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
from .control import ControlError, config_key, default_socket, find_socket, request, runtime_dir_text
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
    restart.add_argument("name", metavar="NAME", help="the daemon to restart")

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
    logs.add_argument("name", metavar="NAME", help="a daemon, a job, `pool` or `procman`")
    logs.add_argument(
        "-n", "--lines", type=int, default=100, metavar="N", help="how many lines (default: 100)"
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
    command = {"status": _status, "restart": _restart, "stop": _stop, "logs": _logs}[args.command]
    return command(args, path)


def not_running(resp: dict[str, Any]) -> list[str]:
    """The daemons of a status answer that are not running, as ``name (state)``."""
    return [f"{d['name']} ({d['state']})" for d in resp.get("daemons", []) if d.get("state") != "running"]


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
    resp = request(path, {"cmd": "restart", "name": args.name}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    print(f"{resp['name']}: restarted (pid {resp['pid']}; the old process {resp['previous']})")
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
    resp = request(path, {"cmd": "logs", "name": args.name, "lines": args.lines}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    for line in resp["lines"]:
        print(line)
    return EXIT_OK


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
    from datetime import datetime

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
    now = datetime.now().astimezone()
    for j in resp.get("jobs", []):
        nxt = j.get("next_run")
        when = "-"
        if nxt:
            t = datetime.fromisoformat(nxt)
            delta = (t if t.tzinfo else t.astimezone()) - now
            when = f"in {_ago(max(0.0, delta.total_seconds()))}"
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
                when,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    head = [f"procman pid {resp.get('pid')} since {resp.get('started')}"]
    if resp.get("stopping"):
        head[0] += " (stopping)"
    head.append(f"config {resp.get('config')}")
    if resp.get("socket"):
        head.append(f"socket {resp.get('socket')}")
    lines = head + [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    down = not_running(resp)
    if down:
        lines.append(f"not running: {', '.join(down)}")
    return "\n".join(lines) + "\n"
