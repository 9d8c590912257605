"""tests/pg_server.py: a real PostgreSQL server on loopback, and nothing of it left behind."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pg_server
import psycopg
import pytest
from helpers import pid_alive


def test_a_server_runs_and_is_gone_after() -> None:
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(pg_server.running())
        except pg_server.PostgresUnavailable as e:
            pytest.skip(f"no PostgreSQL server here: {e}")
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT 1, current_database(), inet_server_addr()::text, pg_backend_pid()"
            ).fetchone()
            setting = conn.execute("SHOW data_directory").fetchone()
        assert row is not None and setting is not None
        assert row[:3] == (1, pg_server.DATABASE, "127.0.0.1/32")
        data_dir = Path(setting[0])
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        assert pid_alive(postmaster)

        other = pg_server.new_database(url, "test_pg_server_other")
        with psycopg.connect(other, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("test_pg_server_other",)
    assert not pid_alive(postmaster)
    assert not pid_alive(row[3])  # the backend served
    assert not data_dir.parent.exists()


def test_no_binaries_says_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pg_server, "SEARCHED", str(tmp_path / "postgresql" / "*" / "bin"))
    with pytest.raises(
        pg_server.PostgresUnavailable, match=r"no initdb on PATH, none in .*/postgresql/\*/bin"
    ):
        pg_server.find_bin_dir()
