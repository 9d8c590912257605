"""Framing, error transport and exit decoding (pure)."""

from __future__ import annotations

import pickle

import pytest

import procman
import workers
from procman._child import wire as _wire


def test_frames_split_anywhere_are_reassembled() -> None:
    msgs = [{"t": "ready"}, {"t": "hb"}, {"t": "error", "msg": "x" * 70000}]
    stream = b"".join(_wire.encode_json(m) for m in msgs) + _wire.encode_raw(b"P", pickle.dumps(42))
    for chunk in (1, 3, 4096, len(stream)):
        reader = _wire.FrameReader()
        bodies = []
        for i in range(0, len(stream), chunk):
            bodies.extend(reader.feed(stream[i : i + chunk]))
        assert [_wire.decode_json(b) for b in bodies[:3]] == msgs
        assert bodies[3][0] == _wire.KIND_PICKLE and pickle.loads(bodies[3][1:]) == 42


def test_corrupt_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="corrupt frame"):
        list(_wire.FrameReader().feed(b"\x00\x00\x00\x00"))


class NeedsArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)


def test_error_records_rebuild_the_exception_or_fall_back_to_text() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        rec = _wire.error_record(exc)
    back = _wire.rebuild_error(rec)
    assert isinstance(back, KeyError) and back.args == ("missing",)
    assert isinstance(back.__cause__, procman.RemoteTraceback) and "KeyError" in back.__cause__.tb
    odd = _wire.rebuild_error(_wire.error_record(NeedsArgs(1, 2)))
    assert isinstance(odd, procman.ChildError) and "NeedsArgs" in str(odd)


@pytest.mark.parametrize(
    ("code", "text"),
    [(0, "EXIT(0)"), (3, "EXIT(3)"), (-9, "SIGKILL(-9)"), (-11, "SIGSEGV(-11)"), (None, "still running")],
)
def test_exit_codes_are_decoded(code: int | None, text: str) -> None:
    assert procman.describe_exit(code) == text


def test_public_names_are_pinned() -> None:
    assert isinstance(procman.__all__, tuple)
    assert sorted(procman.__all__) == list(procman.__all__)
    for name in procman.__all__:
        assert hasattr(procman, name), name
    assert set(procman.__all__) >= {"Manager", "AsyncManager", "CommandDaemon", "RestartPolicy", "heartbeat"}
    assert isinstance(workers.__all__, tuple)


def test_utf8_cut_never_splits_a_character() -> None:
    text = "é€😀" * 1000
    data = text.encode()
    pieces, rest = [], data
    while rest:
        cut = _wire.utf8_cut(rest, 1001)
        assert 0 < cut <= 1001
        pieces.append(rest[:cut].decode("utf-8"))  # strict: each piece is whole characters
        rest = rest[cut:]
    assert "".join(pieces) == text
    assert _wire.utf8_cut(b"abc", 10) == 3
