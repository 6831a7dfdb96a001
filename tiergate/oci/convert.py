"""The one cattrs converter between JSON values and the models in ``model``.

Three things cattrs does not do by default and the runtime-spec needs:
strict types (no ``int("5")``, no ``str(23)``, no string iterated as a list),
unknown keys kept in ``extras`` so parse->dump returns the same JSON value,
and absent fields left out of the dump.  Errors come out as one ``SpecError``
in cattrs' ``msg @ $.path`` style, naming the first failing field.
"""

from __future__ import annotations

from typing import Any, TypeVar, get_args, get_origin

import attrs
from cattrs import Converter
from cattrs.errors import BaseValidationError, ClassValidationError, IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.v import format_exception

from tiergate.oci import jsonio
from tiergate.oci.errors import SpecError, key_path
from tiergate.oci.model import INT_RANGES, Spec, State, validate

T = TypeVar("T")


class _Mismatch(ValueError):
    """A leaf type error; ``sub`` extends the path below the failing field."""

    def __init__(self, reason: str, sub: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sub = sub


def _copy(value: Any) -> Any:
    """Deep-copy a JSON value so extras never alias the caller's dicts."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _Mismatch("expected str")
    return value


def _bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch("expected bool")
    return value


def _int_hook(tp: Any) -> Any:
    name, lo, hi = INT_RANGES[tp]

    def structure(value: Any, _: type) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch("expected int")
        if not lo <= value <= hi:
            raise _Mismatch(f"expected {name}, got {value}")
        return value

    return structure


def _group(errors: list[Exception], cl: type) -> IterableValidationError:
    return IterableValidationError(f"While structuring {cl!r}", errors, cl)


def make_converter() -> Converter:
    """Build the strict, extras-keeping converter (tests build their own too)."""
    conv = Converter(detailed_validation=True)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    for tp in INT_RANGES:
        conv.register_structure_hook(tp, _int_hook(tp))

    def is_list(tp: Any) -> bool:
        return get_origin(tp) is list

    def list_hook(tp: Any) -> Any:
        (item,) = get_args(tp)
        if item is str:

            def strings(value: Any, _: type) -> list[str]:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _Mismatch("expected a list of strings")
                return list(value)

            return strings
        item_hook = conv.get_structure_hook(item)

        def items(value: Any, _: type) -> list:
            if not isinstance(value, list):
                raise _Mismatch("expected a list")
            out, errors = [], []
            for i, v in enumerate(value):
                try:
                    out.append(item_hook(v, item))
                except Exception as e:
                    e.add_note(IterableValidationNote(f"Structuring {tp} @ index {i}", i, item))
                    errors.append(e)
            if errors:
                raise _group(errors, tp)
            return out

        return items

    def is_dict(tp: Any) -> bool:
        return get_origin(tp) is dict and get_args(tp)[0] is str and get_args(tp)[1] is not Any

    def dict_hook(tp: Any) -> Any:
        _, item = get_args(tp)
        item_hook = conv.get_structure_hook(item)

        def mapping(value: Any, _: type) -> dict:
            if not isinstance(value, dict):
                raise _Mismatch("expected an object")
            out, errors = {}, []
            for k, v in value.items():
                try:
                    out[k] = item_hook(v, item)
                except Exception as e:
                    e.add_note(IterableValidationNote(f"Structuring {tp} @ key {k!r}", k, item))
                    errors.append(e)
            if errors:
                raise _group(errors, tp)
            return out

        return mapping

    conv.register_structure_hook_factory(is_list, list_hook)
    conv.register_structure_hook_factory(is_dict, dict_hook)

    def has_extras(tp: Any) -> bool:
        return attrs.has(tp) and "extras" in attrs.fields_dict(tp)

    def structure_factory(cl: type) -> Any:
        known = frozenset(a.name for a in attrs.fields(cl) if a.name != "extras")
        gen: Any = make_dict_structure_fn(cl, conv, extras=override(omit=True))

        def structure(value: Any, _: type) -> Any:
            if not isinstance(value, dict):
                raise _Mismatch("expected an object")
            obj = gen({k: v for k, v in value.items() if k in known}, cl)
            obj.extras = {k: _copy(v) for k, v in value.items() if k not in known}
            return obj

        return structure

    def unstructure_factory(cl: type) -> Any:
        gen: Any = make_dict_unstructure_fn(cl, conv, _cattrs_omit_if_default=True, extras=override(omit=True))

        def unstructure(obj: Any) -> dict:
            out = gen(obj)
            for k, v in obj.extras.items():
                if k not in out:  # a typed field wins over a stray extra of the same name
                    out[k] = _copy(v)
            return out

        return unstructure

    conv.register_structure_hook_factory(has_extras, structure_factory)
    conv.register_unstructure_hook_factory(has_extras, unstructure_factory)
    return conv


converter = make_converter()


def _first_error(exc: BaseException, path: str = "$") -> SpecError:
    """Walk a cattrs exception group down to its first leaf, building the path."""
    if isinstance(exc, BaseValidationError):
        with_notes, without = exc.group_exceptions()  # type: ignore[attr-defined]  # both subclasses have it
        if with_notes:
            sub, note = with_notes[0]
            if isinstance(exc, ClassValidationError):
                return _first_error(sub, f"{path}.{note.name}")
            return _first_error(sub, key_path(path, note.index))
        return _first_error(without[0], path)
    if isinstance(exc, SpecError):
        return SpecError(exc.reason, path + exc.path[1:])
    if isinstance(exc, _Mismatch):
        return SpecError(exc.reason, path + exc.sub)
    return SpecError(format_exception(exc, None), path)


def _structure(data: Any, cl: type[T], what: str) -> T:
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        data = jsonio.loads(bytes(data) if not isinstance(data, str) else data, what)
    elif not isinstance(data, dict):
        raise SpecError("expected an object", "$")
    try:
        return converter.structure(data, cl)
    except SpecError:
        raise
    except Exception as e:  # ExceptionGroups included: never let one escape
        raise _first_error(e) from None


def parse_spec(data: bytes | str | dict) -> Spec:
    """Parse and check a config.json; raise the first problem as one SpecError."""
    spec = _structure(data, Spec, "config")
    errors = validate(spec)
    if errors:
        raise errors[0]
    return spec


def dump_spec(spec: Spec) -> dict:
    """The JSON value of ``spec``: absent fields stay absent, extras come back."""
    return converter.unstructure(spec)


def parse_state(data: bytes | str | dict) -> State:
    """Parse the State a runtime passes to hooks on stdin."""
    return _structure(data, State, "state")


def dump_state(state: State) -> dict:
    return converter.unstructure(state)
