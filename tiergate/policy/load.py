"""Read a policy TOML file into the attrs model, with file:line errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin
import cattrs
from cattrs.gen import make_dict_structure_fn

from tiergate.core.errors import PolicyError
from tiergate.policy.model import EngineSettings, NamespaceRule, PolicyFile, Sensitive, TierSpec, TrustRule

if TYPE_CHECKING:
    from collections.abc import Callable


def _strict(kind: type) -> Callable[[object, type], object]:
    def structure(value: object, _: type) -> object:
        # cattrs would coerce 1 -> "1" and "no" -> True; a policy must say what it means.
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value
    return structure


def _list(conv: cattrs.Converter, value: object, t: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected list, got {type(value).__name__} {value!r}")
    out: list[Any] = []
    errors: list[Exception] = []
    for i, item in enumerate(value):
        try:
            out.append(conv.structure(item, get_args(t)[0]))
        except Exception as exc:  # noqa: BLE001 - collected like cattrs does, with the index
            exc.add_note(f"Structuring {t} @ index {i}")
            errors.append(exc)
    if errors:
        raise cattrs.IterableValidationError(f"While structuring {t!r}", errors, t)
    return out


def _dict(conv: cattrs.Converter, value: object, t: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected table, got {type(value).__name__} {value!r}")
    key_t, val_t = get_args(t)
    out: dict[Any, Any] = {}
    errors: list[Exception] = []
    for key, item in value.items():
        try:
            out[conv.structure(key, key_t)] = conv.structure(item, val_t)
        except Exception as exc:  # noqa: BLE001
            exc.add_note(f"Structuring mapping value @ key {key!r}")
            errors.append(exc)
    if errors:
        raise cattrs.ClassValidationError(f"While structuring {t!r}", errors, t)
    return out


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (str, int, bool):
        conv.register_structure_hook(kind, _strict(kind))
    # cattrs would split "net.core" into characters where a list belongs.
    conv.register_structure_hook_func(lambda t: get_origin(t) is list, lambda v, t: _list(conv, v, t))  # type: ignore[comparison-overlap]
    conv.register_structure_hook_func(lambda t: get_origin(t) is dict, lambda v, t: _dict(conv, v, t))  # type: ignore[comparison-overlap]
    for cls in (PolicyFile, TierSpec, TrustRule, NamespaceRule, Sensitive, EngineSettings):
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True))
    return conv


_CONVERTER = _converter()


def load(path: str | Path) -> tuple[PolicyFile, str]:
    """Parse and structure one policy file; returns the model and its text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror if isinstance(exc, OSError) else exc}", str(path)) from None
    return parse(text, str(path)), text


def parse(text: str, file: str = "<policy>") -> PolicyFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(m.group(1)) if m else (text.count("\n") + 1 if "end of document" in msg else None)
        raise PolicyError(f"invalid TOML: {re.sub(r' [(]at line.*', '', msg)}", file, line) from None
    if "version" not in raw:
        raise PolicyError("missing key 'version' (this tiergate reads version = 1)", file, 1)
    if raw.get("version") != 1:
        raise PolicyError(f"unsupported policy version {raw.get('version')!r} (this tiergate reads version = 1)",
                          file, locate(text, ["version"]))
    try:
        return _CONVERTER.structure(raw, PolicyFile)
    except Exception as exc:  # cattrs raises exception groups; turn the first into one line
        keys, reason = _first_error(exc)
        raise PolicyError(f"{reason} @ {_dotted(keys)}", file, locate(text, keys)) from None


def _first_error(exc: BaseException) -> tuple[list[str | int], str]:
    """Walk cattrs' ExceptionGroup notes down to the first leaf error."""
    path: list[str | int] = []
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        sub = exc.exceptions[0]
        notes = getattr(sub, "__notes__", [])
        for note in notes:
            if note.startswith("Structuring class") and "@ attribute" in note:
                path.append(note.rsplit("@ attribute", 1)[1].strip().strip("'"))
            elif "@ key" in note:
                path.append(note.rsplit("@ key", 1)[1].strip().strip("'"))
            elif "@ index" in note:
                path.append(int(note.rsplit("@ index", 1)[1].strip()))
        exc = sub
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return path + sorted(exc.extra_fields)[:1], f"unknown key {sorted(exc.extra_fields)[0]!r}"
    if isinstance(exc, KeyError):
        return path, f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    reason = str(exc) or type(exc).__name__
    if m := re.match(r"(.*) not in literal typing.Literal\[(.*)\]$", reason):
        return path, f"invalid value {m.group(1)!r}: expected one of {m.group(2)}"
    if isinstance(exc, (TypeError, ValueError)):
        reason = f"invalid value ({reason})"
    return path, reason


def _dotted(keys: list[str | int]) -> str:
    out = "$"
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else f".{k}"
    return out


def locate(text: str, keys: list[str | int]) -> int | None:
    """Best-effort line number of a key path in TOML text (tables, arrays of tables, keys)."""
    lines = text.splitlines()
    start, i = 0, 0
    prefix: list[str | int] = []

    def find(pattern: str, nth: int = 0) -> int | None:
        rx, seen = re.compile(pattern), -1
        for n in range(start, len(lines)):
            if rx.match(lines[n]):
                seen += 1
                if seen == nth:
                    return n
        return None

    while i < len(keys):
        k = keys[i]
        if isinstance(k, int):
            i += 1
            continue
        name = r"\s*\.\s*".join('"?' + re.escape(str(part)) + '"?' for part in [*prefix, k])
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        if isinstance(nxt, int) and (n := find(r"^\s*\[\[\s*" + name + r"\s*\]\]", nxt)) is not None:
            start, prefix, i = n, [*prefix, k], i + 2
        elif (n := find(r"^\s*\[\s*" + name + r"\s*\]")) is not None:
            start, prefix, i = n, [*prefix, k], i + 1
        elif find(r"^\s*\[+\s*" + name + r"\.") is not None:
            prefix, i = [*prefix, k], i + 1
        else:
            n = find(r'^\s*"?' + re.escape(k) + r'"?\s*=')
            return (n if n is not None else start) + 1
    return start + 1
