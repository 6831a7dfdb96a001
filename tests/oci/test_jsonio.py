"""tiergate.oci.jsonio: strict JSON, every failure one exact SpecError line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiergate.oci import jsonio
from tiergate.oci.errors import SpecError

BAD = [
    ("truncated", b'{"ociVersion": "1.0.0", "root": {', "invalid JSON in config: Expecting property name enclosed in double quotes at line 1 column 34 @ $"),
    ("truncated-2nd-line", b'{\n  "a": [1,\n', "invalid JSON in config: Expecting value at line 3 column 1 @ $"),
    ("empty", b"", "invalid JSON in config: Expecting value at line 1 column 1 @ $"),
    ("trailing-garbage", b"{} x", "invalid JSON in config: Extra data at line 1 column 4 @ $"),
    ("array-top", b"[]", "expected an object @ $"),
    ("string-top", b'"x"', "expected an object @ $"),
    ("null-top", b"null", "expected an object @ $"),
    ("non-utf8", b'{"a": "\xff"}', "config is not valid UTF-8 (byte 0xff at offset 7) @ $"),
    ("utf16", '{"a": 1}'.encode("utf-16"), "config is not valid UTF-8 (byte 0xff at offset 0) @ $"),
    ("nan", b'{"a": NaN}', "invalid JSON in config: invalid JSON number NaN @ $"),
    ("infinity", b'{"a": -Infinity}', "invalid JSON in config: invalid JSON number -Infinity @ $"),
    ("dup-top", b'{"a": 1, "a": 2}', "duplicate key 'a' @ $.a"),
    ("dup-nested", b'{"process": {"env": [], "user": {}, "env": []}}', "duplicate key 'env' @ $.process.env"),
    ("dup-in-list", b'{"mounts": [{}, {"type": "x", "type": "y"}]}', "duplicate key 'type' @ $.mounts[1].type"),
    ("dup-odd-key", b'{"linux": {"sysctl": {"net.ipv4.ip_forward": "1", "net.ipv4.ip_forward": "0"}}}',
     "duplicate key 'net.ipv4.ip_forward' @ $.linux.sysctl['net.ipv4.ip_forward']"),
    ("deep-201-objects", b'{"a":' * 201 + b"1" + b"}" * 201, "nesting deeper than 200 levels @ $"),
    ("deep-201-arrays", b'{"a":' + b"[" * 200 + b"]" * 200 + b"}", "nesting deeper than 200 levels @ $"),
    ("deep-recursion", b'{"a":' + b"[" * 100_000, "nesting deeper than 200 levels @ $"),
]  # fmt: skip


class TestLoads:
    @pytest.mark.parametrize(("data", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
    def test_rejects_with_exact_message(self, data: bytes, message: str) -> None:
        """Each malformed document gives one exact, one-line SpecError."""
        with pytest.raises(SpecError) as info:
            jsonio.loads(data)
        assert str(info.value) == message
        assert "\n" not in str(info.value)

    def test_str_input_and_what(self) -> None:
        """A str is accepted; ``what`` names the document in messages."""
        assert jsonio.loads('{"a": "é"}') == {"a": "é"}
        with pytest.raises(SpecError, match="^invalid JSON in state: "):
            jsonio.loads("{", "state")

    def test_depth_200_is_accepted(self) -> None:
        """The limit is inclusive: 200 nested containers parse."""
        assert jsonio.loads(b'{"a":' * 199 + b"[]" + b"}" * 199)

    def test_size_cap_checked_before_parsing(self) -> None:
        """More than MAX_BYTES is refused without decoding (garbage is never parsed)."""
        data = b"\xff" * (jsonio.MAX_BYTES + 1)
        with pytest.raises(SpecError) as info:
            jsonio.loads(data)
        assert str(info.value) == "config is larger than 16777216 bytes @ $"

    def test_size_cap_counts_utf8_bytes_of_str(self) -> None:
        """A str is measured in UTF-8 bytes, not characters."""
        text = '{"a": "' + "é" * (jsonio.MAX_BYTES // 2) + '"}'
        with pytest.raises(SpecError, match="larger than"):
            jsonio.loads(text)

    def test_exactly_max_bytes_is_accepted(self) -> None:
        data = b'{"a": "' + b"x" * (jsonio.MAX_BYTES - 9) + b'"}'
        assert len(data) == jsonio.MAX_BYTES
        assert len(jsonio.loads(data)["a"]) == jsonio.MAX_BYTES - 9


class TestDumps:
    def test_compact_utf8(self) -> None:
        """No spaces, non-ASCII kept as UTF-8 (what runc and engines write)."""
        assert jsonio.dumps({"a": ["é", 1, None]}) == '{"a":["é",1,null]}'.encode()

    def test_lone_surrogate_is_escaped_not_lost(self) -> None:
        """A lone surrogate cannot be UTF-8: fall back to \\u escapes, same value."""
        out = jsonio.dumps({"a": "\ud800"})
        assert json.loads(out) == {"a": "\ud800"}

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
            max_leaves=20,
        ).map(lambda v: {"v": v})
    )
    def test_round_trip(self, obj: dict) -> None:
        """loads(dumps(x)) == x for any JSON object."""
        assert jsonio.loads(jsonio.dumps(obj)) == obj
