"""Read an MXNet symbol JSON file (`nodes` / `arg_nodes` / `heads`) into checked, typed nodes.

Each node is {"op", "name", "inputs": [[node, output, version], ...], and its attributes under
"attrs" (MXNet >= 0.12), "attr" or "param" (older files)}. Variables (weights, data) have op "null".
Every reference is checked: inputs point at earlier nodes, heads at existing ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import InputError

VARIABLE = "null"
_ATTRIBUTE_KEYS = ("attrs", "attr", "param")
# MXNet's own graphs top out in the thousands of nodes; refuse absurd inputs before walking them.
MAX_SYMBOL_BYTES = 256 << 20


@dataclass(frozen=True)
class Entry:
    """One output of one node: (node index, output index)."""

    node: int
    output: int


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    attrs: dict[str, str]
    inputs: tuple[Entry, ...]

    @property
    def is_variable(self) -> bool:
        return self.op == VARIABLE


@dataclass(frozen=True)
class Symbol:
    nodes: tuple[Node, ...]
    heads: tuple[Entry, ...]


def looks_like_symbol(head: bytes) -> bool:
    """Whether the first bytes of a file are those of an MXNet symbol JSON."""
    return head.lstrip()[:1] == b"{" and b'"nodes"' in head


def read_symbol(path: Path) -> Symbol:
    try:
        if path.stat().st_size > MAX_SYMBOL_BYTES:
            raise InputError(f"{path}: {path.stat().st_size} bytes is too large for an MXNet symbol file")
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the symbol file: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); is the symbol file truncated?") from exc
    return parse_symbol(document, path)


def parse_symbol(document: object, path: Path) -> Symbol:
    def fail(what: str) -> InputError:
        return InputError(f"{path}: not an MXNet symbol file: {what}. Re-export it with MXNet's `export` "
                          "or `Symbol.save`")

    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
        raise fail('no "nodes" list at the top level')
    nodes = tuple(_node(raw, index, fail) for index, raw in enumerate(document["nodes"]))
    if not nodes:
        raise fail('"nodes" is empty')
    heads = document.get("heads")
    if not isinstance(heads, list) or not heads:
        raise fail('no "heads" list naming the outputs')
    return Symbol(nodes, tuple(_entry(raw, len(nodes), "heads", fail) for raw in heads))


def _node(raw: object, index: int, fail) -> Node:
    where = f"node #{index}"
    if not isinstance(raw, dict):
        raise fail(f"{where} is not an object")
    op, name, inputs = raw.get("op"), raw.get("name"), raw.get("inputs", [])
    if not isinstance(op, str) or not op or not isinstance(name, str):
        raise fail(f'{where} lacks a string "op" and "name"')
    if not isinstance(inputs, list):
        raise fail(f'{where} ({name}): "inputs" is not a list')
    attrs = next((raw[key] for key in _ATTRIBUTE_KEYS if key in raw), {})
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
        raise fail(f"{where} ({name}): attributes are not a map of strings")
    entries = tuple(_entry(item, index, f"{where} ({name}) inputs", fail) for item in inputs)
    if op == VARIABLE and entries:
        raise fail(f"{where} ({name}) is a variable with inputs")
    return Node(op, name, dict(attrs), entries)


def _entry(raw: object, limit: int, where: str, fail) -> Entry:
    valid = (isinstance(raw, list) and 2 <= len(raw) <= 3
             and all(isinstance(v, int) and not isinstance(v, bool) for v in raw))
    if not valid:
        raise fail(f"{where}: entry {str(raw)[:60]} is not [node, output, version]")
    if not 0 <= raw[0] < limit or raw[1] < 0:
        raise fail(f"{where}: entry {raw} refers to a node that does not come before it")
    return Entry(raw[0], raw[1])
