"""Strict JSON for varlink frames, on the C scanner alone.

The json package costs a start of the thin client more than anything else it imports (json.decoder
imports re, which imports enum: ~5 ms of a 9 ms interpreter start-up). Its C parts (_json) need
neither: the scanner parses with our hooks, strings are quoted in C, and the rest of an encoder
is a few lines. Stricter than json.loads, since every local user reaches the broker:

    loads(text) -> object       no NaN/Infinity, integers within 64 bits, no duplicate keys, no
                                lone UTF-16 surrogates, at most MAX_DEPTH deep; Invalid otherwise
    dumps(value) -> str         compact; ValueError for NaN/Infinity, TypeError for what is not
                                JSON (dict keys must be strings)
"""

from __future__ import annotations

from _json import encode_basestring as _quote  # CPython has had both since 2.6 and 3.1
from _json import make_scanner as _make_scanner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 32  # our messages nest 3 or 4 deep; json's recursion limit is ~1000
_WHITESPACE = " \t\n\r"


class Invalid(ValueError):
    """Not (strict) JSON; the message says why in one line."""


def _no_constant(name: str) -> object:
    raise Invalid(f"{name} is not JSON")


def _int(text: str) -> int:
    # int() of a long digit string is quadratic before Python 3.11's digit limit
    value = int(text) if len(text) <= 21 else None
    if value is None or not -(2**63) <= value < 2**64:
        raise Invalid("integer outside 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e999 parses as inf: Infinity by another name
        raise Invalid("number out of range")
    return value


def _object(pairs: list[tuple[str, object]]) -> dict:
    # two readers of one message must never disagree on which duplicate counts
    result = dict(pairs)
    if len(result) != len(pairs):
        raise Invalid("duplicate key in a JSON object")
    return result


class _Context:
    """What the scanner reads its settings from (json.JSONDecoder's attributes)."""

    strict = True
    object_hook = None
    object_pairs_hook = staticmethod(_object)
    parse_float = staticmethod(_float)
    parse_int = staticmethod(_int)
    parse_constant = staticmethod(_no_constant)



_scan = _make_scanner(_Context())  # type: ignore[arg-type]  # (it takes any such object)


def loads(text: str) -> object:
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise Invalid(f"invalid JSON: expecting a value (character {stop.value})") from None
    except RecursionError:
        raise Invalid(f"JSON nested deeper than {MAX_DEPTH}") from None
    except Invalid:
        raise
    except ValueError as exc:  # json.JSONDecodeError, from the scanner
        raise Invalid(f"invalid JSON: {getattr(exc, 'msg', exc)} "
                      f"(character {getattr(exc, 'pos', '?')})") from None
    if text[end:].strip(_WHITESPACE):
        raise Invalid(f"invalid JSON: extra data (character {end})")
    # the walk is skipped when counting brackets already proves the depth and no \uDxxx escape
    # could have produced a surrogate
    strings = "\\ud" in text or "\\uD" in text
    if strings or text.count("{") + text.count("[") > MAX_DEPTH:
        try:
            _check(value, strings)
        except UnicodeEncodeError:
            raise Invalid("lone UTF-16 surrogate in a JSON string") from None
    return value


def _check(value: object, strings: bool) -> None:
    """Depth, and lone surrogates (a valid \\ud83d\\ude00 pair decodes to one character) when
    strings is set; iterative, so a hostile document cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Invalid(f"JSON nested deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            if strings:
                for key in node:
                    key.encode()
            node = node.values()
        for child in node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif strings and isinstance(child, str):
                child.encode()


def dumps(value: object) -> str:
    out: list[str] = []
    _dump(value, out)
    return "".join(out)


def _dump(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if value - value != 0.0:
            raise ValueError(f"{value!r} is not JSON")
        out.append(float.__repr__(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON keys are strings, not {type(key).__name__}")
            out.append(("," if i else "") + _quote(key) + ":")
            _dump(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _dump(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")
