"""The ``procman`` command.

::

    procman run FILE.toml          run the file's daemons and jobs until Ctrl-C / SIGTERM
    procman check FILE.toml        check the file, start nothing
    procman status [--json]        daemons and jobs of a running procman
    procman restart NAME           restart one daemon (gracefully)
    procman stop [NAME]            stop one daemon, or everything (procman then exits)
    procman logs NAME [-n N]       the last lines of a daemon or job

The control commands find the running procman by ``--socket PATH``, by ``-c FILE.toml`` (its
default socket, or the one the file names), or, with neither, the only one running.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ._config import ConfigError, load
from ._control import ControlError, default_socket, find_socket, request

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="procman",
        description="Run daemons and timed jobs in supervised child processes, from a TOML file.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemons and jobs of a config file until Ctrl-C or SIGTERM")
    run.add_argument("config", help="the TOML config file")
    run.add_argument("--socket", help="control socket path (default: from the file, or the runtime dir)")
    run.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the names (default: auto)",
    )
    check = sub.add_parser("check", help="check a config file without starting anything")
    check.add_argument("config", help="the TOML config file")

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("-c", "--config", help="the config file of the procman to talk to")
    where.add_argument("--socket", help="the control socket of the procman to talk to")
    where.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for an answer (default 60)"
    )
    status = sub.add_parser("status", parents=[where], help="show daemons and jobs of a running procman")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    restart = sub.add_parser("restart", parents=[where], help="restart a daemon gracefully")
    restart.add_argument("name")
    stop = sub.add_parser("stop", parents=[where], help="stop one daemon, or everything")
    stop.add_argument("name", nargs="?")
    logs = sub.add_parser("logs", parents=[where], help="the last lines of a daemon or job")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many lines (default 100)")
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
    from ._console import use_color
    from ._runner import run

    cfg = load(args.config)
    socket_path = Path(args.socket) if args.socket else cfg.socket or default_socket(cfg.path)
    return run(cfg, socket_path=socket_path, color=use_color(sys.stdout, args.color))


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        # Only the [procman] socket key: loading the whole file would import the app and call its
        # factories in this client.
        cfg_path = Path(args.config)
        try:
            data = tomllib.loads(cfg_path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{cfg_path}: cannot read it: {exc}") from None
        sock = data.get("procman", {}).get("socket") if isinstance(data.get("procman"), dict) else None
        if isinstance(sock, str) and sock:
            return cfg_path.resolve().parent / sock
        return default_socket(cfg_path)
    return find_socket()


def _control(args: argparse.Namespace) -> int:
    path = _socket(args)
    command = {"status": _status, "restart": _restart, "stop": _stop, "logs": _logs}[args.command]
    return command(args, path)


def _status(args: argparse.Namespace, path: Path) -> int:
    resp = request(path, {"cmd": "status"}, args.timeout)
    if not resp.get("ok"):
        return _fail(resp)
    if args.json:
        sys.stdout.write(orjson.dumps(resp, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_status(resp))
    return EXIT_OK


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
    head = f"procman pid {resp.get('pid')} since {resp.get('started')}, {resp.get('config')}"
    if resp.get("stopping"):
        head += " (stopping)"
    lines = [head] + [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines) + "\n"
