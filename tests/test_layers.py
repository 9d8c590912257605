"""The structure holds: import-linter's contracts, children that load only the child side, and the
public names of both packages, pinned."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import daemons
import jobs
import pytest
from helpers import wait_until

import procman
import workers

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

PROCMAN_NAMES = {
    "ManagerCollector", "UsageTracker", "daemon_families", "openmetrics",
    "AsyncManager", "ChildError", "CommandDaemon", "Daemon", "DaemonError", "DaemonExited", "DaemonState",
    "DaemonStatus", "Event", "EventHook", "EventKind", "ExitInfo", "Manager", "ManagerClosed",
    "OperationTimeout", "ProcmanError", "RemoteTraceback", "Restart", "RestartPolicy", "StartError",
    "StateError", "StopOutcome", "StopReport", "check_daemon", "check_name", "dependency_cycle",
    "describe_exit", "heartbeat", "in_child", "log_event", "run_until_signal",
}  # fmt: skip
WORKERS_NAMES = {
    "JobRunStats", "PoolCollector", "pool_families",
    "Cron", "DaskBackend", "DaskBackendError", "Every", "JobFuture", "JobTimeout", "Plan", "Pool",
    "PoolBroken", "PoolClosed", "PoolEvent",
    "PoolEventKind", "PoolFull", "PoolStats", "RunRecord", "Schedule", "ScheduleError", "ScheduleState",
    "Store", "StoreError", "TimedJob",
    "SerializationError", "WorkerCrashed", "WorkersError", "check_job", "log_pool_event", "parse_duration",
    "plan", "scheduled_time",
}  # fmt: skip


def lint_imports(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """lint-imports run in ``root``, with the contracts of its pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("procman/_child/boot.py", "import workers", "children import only the child side"),
        ("procman/_child/wire.py", "from procman import _errors", "children import only the child side"),
        ("procman/_manager.py", "import workers._pool", "procman's library never imports workers"),
        ("workers/_futures.py", "from procman import _supervisor", "workers uses only procman's process"),
        ("procman/cli/console.py", "from workers import _pool", "the command uses the public names"),
        ("procman/_proc/child.py", "from procman import _manager", "procman in layers"),
    ],
)
def test_a_wrong_way_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts are not vacuous: one import the wrong way in a copy of the tree breaks one."""
    for part in ("procman", "workers"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [ln for ln in done.stdout.splitlines() if " BROKEN" in ln]
    assert len(broken) >= 1 and any(ln.startswith(contract) for ln in broken), done.stdout


def test_public_names_are_pinned() -> None:
    assert set(procman.__all__) == PROCMAN_NAMES
    assert set(workers.__all__) == WORKERS_NAMES
    for package, names in ((procman, PROCMAN_NAMES), (workers, WORKERS_NAMES)):
        assert list(package.__all__) == sorted(package.__all__)
        for name in names:
            assert getattr(package, name) is not None, name
        assert names <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        procman.Nope  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        workers.Nope  # noqa: B018


def test_the_command_states_the_libraries_limits_as_they_do() -> None:
    """What the command keeps of its own (it may not import the libraries' private names) agrees."""
    from procman._proc.loop import MAX_SECONDS
    from procman._proc.start import START_METHODS
    from procman.cli import config, tables

    assert tables.MAX_SECONDS == MAX_SECONDS
    assert config.START_METHODS == START_METHODS


def _child_side_only(loaded: list[str]) -> list[str]:
    """What a child loaded beyond procman._child (and the package procman itself)."""
    return [m for m in loaded if m != "procman" and not m.startswith("procman._child")]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_worker_loads_only_the_child_side(method: str) -> None:
    with workers.Pool(1, start_method=method) as pool:
        loaded = pool.submit(jobs.loaded_modules).result(timeout=60)
    assert "procman._child.worker_loop" in loaded
    assert _child_side_only(loaded) == []


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_daemon_loads_only_the_child_side(method: str) -> None:
    lines: list[str] = []
    with procman.Manager(start_method=method, output=lambda name, stream, line: lines.append(line)) as m:
        m.register(daemons.ModulesReport("report"))
        m.start()
        wait_until(lambda: any(ln.startswith("loaded ") for ln in lines), what="the daemon's report")
    loaded = next(ln for ln in lines if ln.startswith("loaded ")).split()[1:]
    assert "procman._child.daemon_loop" in loaded
    assert _child_side_only(loaded) == []


def test_every_private_module_is_under_a_contract() -> None:
    """A module added later cannot slip past the contracts: each private module of both packages
    is forbidden to the command, and each of procman's sits in a layer."""
    import pkgutil
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    by_name = {c["name"]: c for c in contracts}
    command = set(by_name["the command uses the public names of procman and workers"]["forbidden_modules"])
    layers = by_name["procman in layers: cli > daemons > process layer > child side"]["layers"]
    layered = {f"procman.{m.strip()}" for layer in layers for m in layer.replace("|", ":").split(":")}
    for package in (procman, workers):
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
            if info.name.rsplit(".", 1)[1].startswith("_") and info.name != "procman.__main__":
                assert info.name in command, f"{info.name} is missing from the command's contract"
                if package is procman:
                    assert info.name in layered, f"{info.name} is in no layer of procman's contract"
