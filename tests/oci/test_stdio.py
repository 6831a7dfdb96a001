"""tiergate.oci.stdio: one JSON object in, compact JSON out, nothing else on stdout."""

from __future__ import annotations

import io
import sys

import pytest

from tiergate.oci import jsonio, stdio
from tiergate.oci.errors import OciError, SpecError


class _Stream:
    def __init__(self, data: bytes = b"") -> None:
        self.buffer = io.BytesIO(data)


def test_read_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Stream(b'{"id": "c1", "pid": 4}'))
    assert stdio.read_stdin() == {"id": "c1", "pid": 4}


def test_read_stdin_errors_name_what(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Stream(b'{"id": '))
    with pytest.raises(SpecError) as info:
        stdio.read_stdin("state")
    assert str(info.value) == "invalid JSON in state: Expecting value at line 1 column 8 @ $"


def test_read_stdin_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_BYTES + 1 bytes are read, then refused."""
    stream = _Stream(b" " * (jsonio.MAX_BYTES + 100))
    monkeypatch.setattr(sys, "stdin", stream)
    with pytest.raises(SpecError, match=r"^spec is larger than 16777216 bytes @ \$$"):
        stdio.read_stdin("spec")
    assert stream.buffer.tell() == jsonio.MAX_BYTES + 1


def test_no_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(OciError, match="^no stdin to read the state from$"):
        stdio.read_stdin()


def test_write_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    out = _Stream()
    monkeypatch.setattr(sys, "stdout", out)
    stdio.write_stdout({"a": ["é"]})
    assert out.buffer.getvalue() == '{"a":["é"]}'.encode()
