"""Typed access to an MXNet node's attributes, which the symbol JSON stores as strings ("(3, 3)", "True")."""

from __future__ import annotations

import ast

from kiln.errors import InputError

_REQUIRED = object()
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


class Unsupported(Exception):
    """A converter met an attribute value it cannot express in ONNX; the message names it."""


class Attrs:
    def __init__(self, raw: dict[str, str], op: str, node: str):
        self.raw, self.op, self.node = raw, op, node

    def _get(self, key: str, default, parse):
        if key not in self.raw:
            if default is _REQUIRED:
                raise InputError(f"{self.op} node {self.node!r} lacks its required attribute {key!r}")
            return default
        try:
            return parse(self.raw[key].strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise InputError(f"{self.op} node {self.node!r}: attribute {key}={self.raw[key][:60]!r} is not "
                             f"valid ({exc})") from exc

    def int(self, key: str, default=_REQUIRED) -> int:
        return self._get(key, default, int)

    def float(self, key: str, default=_REQUIRED) -> float:
        return self._get(key, default, float)

    def str(self, key: str, default=_REQUIRED) -> str:
        return self._get(key, default, str)

    def bool(self, key: str, default=_REQUIRED) -> bool:
        return self._get(key, default, _parse_bool)

    def optional_bool(self, key: str) -> bool | None:
        return self._get(key, None, lambda text: None if text == "None" else _parse_bool(text))

    def optional_int(self, key: str) -> int | None:
        return self._get(key, None, lambda text: None if text == "None" else int(text))

    def optional_float(self, key: str) -> float | None:
        return self._get(key, None, lambda text: None if text == "None" else float(text))

    def ints(self, key: str, default=_REQUIRED) -> tuple[int, ...]:
        return self._get(key, default, lambda text: _parse_tuple(text, allow_none=False))

    def optional_ints(self, key: str, default=_REQUIRED) -> tuple[int | None, ...]:
        """A tuple whose items may be None, as in slice's begin=(0, None)."""
        return self._get(key, default, lambda text: _parse_tuple(text, allow_none=True))


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("expected True or False")


def _parse_tuple(text: str, *, allow_none: bool) -> tuple:
    if len(text) > 1000:
        raise ValueError("too long for a shape")
    value = ast.literal_eval(text)
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if not (isinstance(item, int) and not isinstance(item, bool)) and not (allow_none and item is None):
            raise ValueError("expected a tuple of integers")
    return items
