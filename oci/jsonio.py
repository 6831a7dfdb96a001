"""Strict JSON in and out for OCI documents; hot path, standard library only.

Python's ``json`` is lenient where a runtime is not: it keeps the last of
duplicate keys (runc keeps the last too, our policy would check the first),
accepts NaN and guesses UTF-16/32 from bytes.  Every such case is turned into
one ``SpecError`` line here so callers never see a traceback.
"""

from __future__ import annotations

import json

from tiergate.oci.errors import SpecError, key_path

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

    try:
        obj = json.JSONDecoder(object_pairs_hook=pairs_hook, parse_constant=_bad_constant).decode(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"invalid JSON in {what}: {e.msg} at line {e.lineno} column {e.colno}", "$") from None
    except ValueError as e:  # NaN/Infinity from _bad_constant
        raise SpecError(f"invalid JSON in {what}: {e}", "$") from None
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", "$") from None
    if not isinstance(obj, dict):
        raise SpecError("expected an object", "$")
    # Depth can only exceed the limit if there are that many brackets at all.
    if dups:
        _walk(obj)
    elif text.count("{") + text.count("[") > MAX_DEPTH and not _shallow(obj, MAX_DEPTH - 1):
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", "$")
    return obj


def _shallow(node: dict | list, room: int) -> bool:
    """True if no container nests more than ``room`` levels below ``node``."""
    for v in node.values() if isinstance(node, dict) else node:
        if isinstance(v, (dict, list)) and (room == 0 or not _shallow(v, room - 1)):
            return False
    return True


def dumps(obj: object) -> bytes:
    """Compact UTF-8 JSON; lone surrogates fall back to ``\\u`` escapes, keeping the value."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
