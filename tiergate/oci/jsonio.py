"""Strict JSON in and out for OCI documents; hot path, standard library only.

Python's ``json`` is lenient where a runtime is not: it keeps the last of
duplicate keys (runc keeps the last too, our policy would check the first),
accepts NaN and guesses UTF-16/32 from bytes.  Every such case is turned into
one ``SpecError`` line here so callers never see a traceback.
"""

from __future__ import annotations

import _json

from tiergate.oci.errors import SpecError, key_path

# The C scanner and encoder behind the `json` package, used directly: importing
# `json` pulls in `re` and `enum` (~5 ms), a third of a container start's budget.
_WS = " \t\n\r"

MAX_BYTES = 16 * 1024 * 1024
"""Largest document accepted; checked before decoding or parsing."""

MAX_DEPTH = 200
"""Deepest nesting accepted; real configs nest about 6 levels."""


class _DupDict(dict):
    """An object that had a repeated key; found and reported after parsing."""

    dup_key: str


def _dup_dict(pairs: list[tuple[str, object]]) -> _DupDict:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            break
        seen.add(k)
    d = _DupDict(pairs)
    d.dup_key = k
    return d


def _bad_constant(name: str) -> object:
    raise ValueError(f"invalid JSON number {name}")


def _walk(obj: object) -> None:
    """Raise SpecError for the first duplicate key (in document order) or too deep nesting.

    Only runs when a duplicate was seen, so building paths here costs nothing
    on the common path.
    """
    stack: list[tuple[object, str, int]] = [(obj, "$", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", "$")
        if isinstance(node, dict):
            if isinstance(node, _DupDict):
                raise SpecError(f"duplicate key {node.dup_key!r}", key_path(path, node.dup_key))
            items = [(v, key_path(path, k), depth + 1) for k, v in node.items() if isinstance(v, (dict, list))]
        elif isinstance(node, list):
            items = [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node) if isinstance(v, (dict, list))]
        else:
            continue
        stack.extend(reversed(items))  # document order: first offender wins


def loads(data: bytes | str, what: str = "config") -> dict:
    """Parse one JSON object; ``what`` names the document in error messages."""
    if isinstance(data, str):
        size = len(data) if len(data) * 4 <= MAX_BYTES else len(data.encode("utf-8", "surrogatepass"))
        text = data
    else:
        size = len(data)
    if size > MAX_BYTES:
        raise SpecError(f"{what} is larger than {MAX_BYTES} bytes", "$")
    if not isinstance(data, str):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(
                f"{what} is not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})", "$"
            ) from None
    dups: list[bool] = []

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        d = dict(pairs)
        if len(d) != len(pairs):
            dups.append(True)
            return _dup_dict(pairs)
        return d

    obj = parse(text, what, pairs_hook)
    if not isinstance(obj, dict):
        raise SpecError("expected an object", "$")
    # Depth can only exceed the limit if there are that many brackets at all.
    if dups:
        _walk(obj)
    elif text.count("{") + text.count("[") > MAX_DEPTH and not _shallow(obj, MAX_DEPTH - 1):
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", "$")
    return obj


class _Context:
    """The attributes _json.make_scanner reads (what json.JSONDecoder would hold)."""

    def __init__(self, pairs_hook) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = pairs_hook
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = _bad_constant
        self.memo: dict = {}


def _position(text: str, idx: int) -> str:
    line = text.count("\n", 0, idx) + 1
    return f"line {line} column {idx - (text.rfind(chr(10), 0, idx) + 1) + 1}"


def parse(text: str, what: str = "document", pairs_hook=None) -> object:
    """Any JSON value from text, strictly (no NaN, nothing after the value); one SpecError line otherwise."""
    start = len(text) - len(text.lstrip(_WS))
    obj, end = value_at(text, start, what, pairs_hook)
    rest = text[end:]
    if rest.strip(_WS):
        end += len(rest) - len(rest.lstrip(_WS))
        raise SpecError(f"invalid JSON in {what}: Extra data at {_position(text, end)}", "$")
    return obj


def value_at(text: str, start: int, what: str = "document", pairs_hook=None) -> tuple[object, int]:
    """The JSON value that starts at text[start] (part of a larger document) and the index after it."""
    scan = _json.make_scanner(_Context(pairs_hook))  # type: ignore[arg-type]  # the scanner reads only these attributes
    try:
        try:
            obj, end = scan(text, start)
        except SystemError:
            # The C scanner raises json.decoder.JSONDecodeError only if that module is
            # loaded; on the error path it is worth importing for a precise message.
            import json.decoder  # noqa: F401  (imported for its side effect)

            obj, end = scan(text, start)
    except StopIteration as e:
        where = e.value if isinstance(e.value, int) else start
        raise SpecError(f"invalid JSON in {what}: Expecting value at {_position(text, where)}", "$") from None
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", "$") from None
    except ValueError as e:  # JSONDecodeError from the scanner, or NaN/Infinity from _bad_constant
        msg = getattr(e, "msg", None)
        if msg is not None:
            raise SpecError(f"invalid JSON in {what}: {msg} at {_position(text, e.pos)}", "$") from None  # type: ignore[attr-defined]
        raise SpecError(f"invalid JSON in {what}: {e}", "$") from None
    return obj, end


def _shallow(node: dict | list, room: int) -> bool:
    """True if no container nests more than ``room`` levels below ``node``."""
    for v in node.values() if isinstance(node, dict) else node:
        if isinstance(v, (dict, list)) and (room == 0 or not _shallow(v, room - 1)):
            return False
    return True


def _unserialisable(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_ENCODE_UTF8 = _json.make_encoder(None, _unserialisable, _json.encode_basestring, None, ":", ",", False, False, False)
_ENCODE_ASCII = _json.make_encoder(None, _unserialisable, _json.encode_basestring_ascii, None, ":", ",", False, False, False)


def dumps(obj: object, ascii: bool = False) -> bytes:
    """Compact UTF-8 JSON (or pure ASCII); lone surrogates fall back to ``\\u`` escapes, keeping the value."""
    if not ascii:
        try:
            return "".join(_ENCODE_UTF8(obj, 0)).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return "".join(_ENCODE_ASCII(obj, 0)).encode("ascii")
