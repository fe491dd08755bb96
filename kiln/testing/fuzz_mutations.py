"""Seeded mutations of kiln's input files, for the fuzzer (kiln.testing.fuzz): byte flips, truncations, insertions
and deletions of any file, and structured edits (numbers, keys, dims, indices) of the parsed JSON, text, ONNX
protobuf, zip members (.npz, skops), PNG chunks and binary headers. Each mutation returns the new bytes and a
one-line description of the edit, for the failure report.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import warnings
import zipfile
import zlib
from typing import Any, Callable

Mutation = Callable[[bytes, random.Random], tuple[bytes, str]]

# Values that break readers: zero, negatives, the edges of 8/16/32/64-bit integers, and sizes just past small ones.
INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 8, 255, 256, -128, 65535, 65536, 2**31 - 1, 2**31, -2**31, 2**32,
                    2**63 - 1, -2**63, 10**6, 10**9, 10**12)
INTERESTING_FLOATS = ("0", "-0.0", "1e308", "-1e308", "1e-320", "NaN", "Infinity", "-Infinity", "0.5", "-1")
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


def mutate(data: bytes, kind: str, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of `data`, a file of `kind` (a key of STRUCTURED): structured three times in five."""
    structured = STRUCTURED.get(kind, ())
    if structured and rng.random() < 0.6:
        try:
            return rng.choice(structured)(data, rng)
        except _NotApplicable:
            pass
    return rng.choice(BYTE_MUTATIONS)(data, rng)


class _NotApplicable(Exception):
    """The file has nothing this structured edit could change (it falls back to a byte mutation)."""


# --- bytes ----------------------------------------------------------------------------------------------------------

def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    offsets = sorted(rng.randrange(len(out)) for _ in range(rng.choice((1, 1, 2, 4, 8))))
    for offset in offsets:
        out[offset] ^= 1 << rng.randrange(8)
    return bytes(out), f"flip bits at {offsets}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    return data[:at], f"truncate to {at} of {len(data)} bytes"


def insert_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        start = rng.randrange(len(data))
        chunk = data[start:start + rng.choice((1, 4, 16, 256, 4096))]
        what = f"a copy of bytes {start}..{start + len(chunk)}"
    else:
        chunk = rng.randbytes(rng.choice((1, 2, 8, 64)))
        what = f"{len(chunk)} random bytes"
    return data[:at] + chunk + data[at:], f"insert {what} at {at}"


def delete_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at, size = rng.randrange(len(data)), rng.choice((1, 2, 4, 16, 256))
    return data[:at] + data[at + size:], f"delete {size} bytes at {at}"


def overwrite_int(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    width = rng.choice((1, 2, 4, 8))
    at = rng.randrange(max(1, len(data) - width))
    value = rng.choice(INTERESTING_INTS) % 2 ** (8 * width)
    order = rng.choice(("little", "big"))
    return data[:at] + value.to_bytes(width, order) + data[at + width:], f"write {value} as {width} bytes at {at}"


BYTE_MUTATIONS: tuple[Mutation, ...] = (flip_bits, truncate, insert_bytes, delete_bytes, overwrite_int)


# --- binary headers: the small aligned integers of a binary file are its counts, dims and offsets ---------------

def header_int(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    width = rng.choice((4, 8))
    sites = [at for at in range(0, len(data) - width + 1, 4)
             if 0 < int.from_bytes(data[at:at + width], "little") <= 65536]
    if not sites:
        raise _NotApplicable
    at = rng.choice(sites)
    old = int.from_bytes(data[at:at + width], "little")
    value = rng.choice(INTERESTING_INTS + (old + 1, old - 1, old * 2)) % 2 ** (8 * width)
    return data[:at] + value.to_bytes(width, "little") + data[at + width:], f"header int at {at}: {old} -> {value}"


# --- UBJSON: an integer after its type marker (XGBoost's counts, indices and array lengths) ------------------------

_UBJSON_INTS = {ord("i"): (1, True), ord("U"): (1, False), ord("I"): (2, True), ord("l"): (4, True),
                ord("L"): (8, True)}


def ubjson_int(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    counts = [at for at in range(1, len(data) - 1) if data[at - 1] == ord("#") and data[at] in _UBJSON_INTS]
    sites = counts if counts and rng.random() < 0.3 else [at for at in range(len(data) - 1) if data[at] in _UBJSON_INTS]
    if not sites:
        raise _NotApplicable
    at = rng.choice(sites)
    width, signed = _UBJSON_INTS[data[at]]
    value = rng.choice(INTERESTING_INTS)
    bounds = (-2 ** (8 * width - 1), 2 ** (8 * width - 1) - 1) if signed else (0, 2 ** (8 * width) - 1)
    value = min(max(value, bounds[0]), bounds[1])
    encoded = value.to_bytes(width, "big", signed=signed)
    return data[:at + 1] + encoded + data[at + 1 + width:], f"UBJSON int after marker at {at} -> {value}"


# --- text: numbers, words and lines -----------------------------------------------------------------------------

def text_number(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    matches = list(_NUMBER.finditer(data))
    if not matches:
        raise _NotApplicable
    match = rng.choice(matches)
    old = match.group()
    choices = [str(v) for v in INTERESTING_INTS] + list(INTERESTING_FLOATS)
    if b"." not in old and b"e" not in old.lower():
        choices += [str(int(old) + 1), str(int(old) - 1), str(int(old) * 1000)]
    new = rng.choice(choices).encode()
    return data[:match.start()] + new + data[match.end():], f"number {old!r} at {match.start()} -> {new!r}"


def text_word(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    matches = list(_WORD.finditer(data))
    if len(matches) < 2:
        raise _NotApplicable
    match, other = rng.choice(matches), rng.choice(matches).group()
    return data[:match.start()] + other + data[match.end():], f"word {match.group()!r} at {match.start()} -> {other!r}"


def text_lines(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    lines = data.splitlines(keepends=True)
    if len(lines) < 2:
        raise _NotApplicable
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    edit = rng.choice(("delete", "duplicate", "swap"))
    if edit == "delete":
        del lines[i]
    elif edit == "duplicate":
        lines.insert(j, lines[i])
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines), f"{edit} line {i}" + (f" with line {j}" if edit != "delete" else "")


TEXT_MUTATIONS: tuple[Mutation, ...] = (text_number, text_number, text_word, text_lines)


# --- JSON: one value of the parsed document -----------------------------------------------------------------------

def json_value(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _NotApplicable from None
    sites = list(_json_sites(document, ()))[1:]  # not the root: every edit is of a value inside it
    if not sites:
        raise _NotApplicable
    path, value = rng.choice(sites)
    strings = [v for _, v in sites if isinstance(v, str)] or [""]
    new, what = _edit_json(value, strings, rng)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if what == "rename key" and isinstance(parent, dict):
        parent[rng.choice(strings)] = parent.pop(path[-1])
    elif what in ("delete", "rename key"):
        del parent[path[-1]]
        what = "delete"
    else:
        parent[path[-1]] = new
    return json.dumps(document).encode(), f"JSON {'/'.join(map(str, path))}: {what}"


def _json_sites(value: Any, path: tuple) -> Any:
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _json_sites(child, (*path, key))


def _edit_json(value: Any, strings: list[str], rng: random.Random) -> tuple[Any, str]:
    if isinstance(value, bool) or value is None:
        new = rng.choice((0, "", [], not value))
    elif isinstance(value, int):
        new = rng.choice(INTERESTING_INTS + (value + 1, value - 1, -value))
    elif isinstance(value, float):
        new = rng.choice((0.0, -value, float("nan"), float("inf"), 1e308, value * 1e6))
    elif isinstance(value, str):
        new = rng.choice((rng.choice(strings), "", value * 2, 7, value[:-1]))
    elif isinstance(value, list):
        edit = rng.choice(("empty", "drop", "duplicate", "reverse", "append"))
        new = {"empty": [], "drop": value[1:], "duplicate": value + value[:1], "reverse": value[::-1],
               "append": value + [rng.choice(INTERESTING_INTS)]}[edit]
        return new, f"list {edit}"
    else:
        return value, rng.choice(("delete", "rename key"))
    if rng.random() < 0.15:
        return None, "delete"
    return new, f"{value!r:.40} -> {new!r:.40}"


# --- ONNX: dims, data, indices and attributes of the parsed ModelProto ---------------------------------------------

def onnx_edit(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # any decoding failure: the earlier mutation left no model to edit
        raise _NotApplicable from None
    graph = model.graph
    edits = [_onnx_tensor_dims, _onnx_tensor_data, _onnx_node_wiring, _onnx_attribute, _onnx_value_dims,
             _onnx_versions, _onnx_delete, _onnx_external_data]
    rng.shuffle(edits)
    for edit in edits:
        try:
            what = edit(model, graph, rng)
        except ValueError:  # an earlier byte mutation left a name that is not UTF-8: protobuf will not copy it
            raise _NotApplicable from None
        if what:
            return model.SerializeToString(), f"ONNX {what}"
    raise _NotApplicable


def _onnx_tensor_dims(model, graph, rng) -> str:
    if not graph.initializer:
        return ""
    tensor = rng.choice(graph.initializer)
    edit = rng.choice(("set", "add", "drop"))
    if edit == "set" and tensor.dims:
        i = rng.randrange(len(tensor.dims))
        tensor.dims[i] = rng.choice(INTERESTING_INTS[:-3] + (tensor.dims[i] + 1,))
        return f"initializer {tensor.name} dim {i} -> {tensor.dims[i]}"
    if edit == "add":
        tensor.dims.append(rng.choice((1, 2, 0)))
        return f"initializer {tensor.name} dims + {tensor.dims[-1]}"
    if tensor.dims:
        del tensor.dims[-1]
        return f"initializer {tensor.name} drops its last dim"
    return ""


def _onnx_tensor_data(model, graph, rng) -> str:
    if not graph.initializer:
        return ""
    tensor = rng.choice(graph.initializer)
    edit = rng.choice(("type", "shorten", "extend"))
    if edit == "type":
        tensor.data_type = rng.choice((0, 2, 3, 6, 7, 8, 10, 11, 16, 21, 40))
        return f"initializer {tensor.name} data_type -> {tensor.data_type}"
    if edit == "shorten":
        tensor.raw_data = tensor.raw_data[:len(tensor.raw_data) // 2]
    else:
        tensor.raw_data = tensor.raw_data + bytes(rng.choice((1, 4, 1024)))
    return f"initializer {tensor.name} raw_data {edit}ed to {len(tensor.raw_data)} bytes"


def _onnx_node_wiring(model, graph, rng) -> str:
    if not graph.node:
        return ""
    node = rng.choice(graph.node)
    names = [name for n in graph.node for name in (*n.input, *n.output)] + [i.name for i in graph.input] + ["x"]
    edit = rng.choice(("input", "output", "op", "drop input", "extra input"))
    if edit == "input" and node.input:
        i = rng.randrange(len(node.input))
        node.input[i] = rng.choice(names + ["", "missing"])
        return f"node {node.name} input {i} -> {node.input[i]!r}"
    if edit == "output" and node.output:
        node.output[0] = rng.choice(names)
        return f"node {node.name} output 0 -> {node.output[0]!r}"
    if edit == "op":
        node.op_type = rng.choice([n.op_type for n in graph.node] + ["If", "Loop", "Scan", "NoSuchOp", ""])
        return f"node {node.name} op -> {node.op_type!r}"
    if edit == "drop input" and node.input:
        del node.input[-1]
        return f"node {node.name} drops its last input"
    node.input.append(rng.choice(names))
    return f"node {node.name} gains input {node.input[-1]!r}"


def _onnx_attribute(model, graph, rng) -> str:
    attributes = [(n, a) for n in graph.node for a in n.attribute]
    if not attributes:
        return ""
    node, attribute = rng.choice(attributes)
    value = rng.choice(INTERESTING_INTS[:-3])
    if attribute.ints:
        attribute.ints[rng.randrange(len(attribute.ints))] = value
    elif attribute.type == attribute.INT:
        attribute.i = value
    elif attribute.type == attribute.FLOAT:
        attribute.f = float(rng.choice(INTERESTING_FLOATS))
    else:
        attribute.name = rng.choice(("axis", "pads", "kernel_shape", "", "bogus"))
        return f"node {node.name} attribute renamed to {attribute.name!r}"
    return f"node {node.name} attribute {attribute.name} -> {value}"


def _onnx_value_dims(model, graph, rng) -> str:
    values = [*graph.input, *graph.output]
    if not values:
        return ""
    value = rng.choice(values)
    dims = value.type.tensor_type.shape.dim
    edit = rng.choice(("dim", "type", "rank"))
    if edit == "dim" and dims:
        dim = dims[rng.randrange(len(dims))]
        dim.dim_value = rng.choice((0, 1, 3, 2**31 - 1, 10**12))
        return f"{value.name} dim -> {dim.dim_value}"
    if edit == "type":
        value.type.tensor_type.elem_type = rng.choice((0, 2, 6, 7, 8, 9, 16, 99))
        return f"{value.name} elem_type -> {value.type.tensor_type.elem_type}"
    dims.add().dim_value = rng.choice((1, 7))
    return f"{value.name} gains a dim"


def _onnx_versions(model, graph, rng) -> str:
    if rng.random() < 0.5 and model.opset_import:
        model.opset_import[0].version = rng.choice((0, 1, 7, 10, 12, 19, 23, 99, 2**31 - 1))
        return f"opset -> {model.opset_import[0].version}"
    model.ir_version = rng.choice((0, 1, 3, 4, 12, 99))
    return f"ir_version -> {model.ir_version}"


def _onnx_delete(model, graph, rng) -> str:
    field = rng.choice(("node", "initializer", "input", "output"))
    items = getattr(graph, field)
    if not items:
        return ""
    i = rng.randrange(len(items))
    del items[i]
    return f"delete {field} {i}"


def _onnx_external_data(model, graph, rng) -> str:
    entries = [e for t in graph.initializer for e in t.external_data]
    if not entries:
        return ""
    entry = rng.choice(entries)
    if entry.key in ("offset", "length"):
        entry.value = str(rng.choice(INTERESTING_INTS[:-3] + (int(entry.value or 0) + 1,)))
    else:
        entry.value = rng.choice(("", ".", "..", "missing.data", "model.onnx", "../model.onnx.data", "/dev/zero"))
    return f"external data {entry.key} -> {entry.value!r}"


# --- zip archives (.npz, skops): one member, edited by its own kind; then written back as a valid zip -------------

def zip_member(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info, archive.read(info)) for info in archive.infolist()]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, NotImplementedError):
        raise _NotApplicable from None
    if not members:
        raise _NotApplicable
    i = rng.randrange(len(members))
    info, content = members[i]
    if info.filename.endswith(".npy") and rng.random() < 0.7:
        content, what = _npy_header(content, rng)
    elif info.filename.endswith(".json"):
        content, what = mutate(content, "json", rng)
    elif rng.random() < 0.3:
        info.filename, what = rng.choice(members)[0].filename + rng.choice(("", "x")), "renamed"
    else:
        content, what = (rng.choice(BYTE_MUTATIONS)(content, rng) if content else (b"x", "filled"))
    members[i] = (info, content)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a renamed member may duplicate a name: that is the mutation
        for member, body in members:
            archive.writestr(member.filename, body, compress_type=member.compress_type)
    return out.getvalue(), f"zip member {info.filename}: {what}"


def _npy_header(content: bytes, rng: random.Random) -> tuple[bytes, str]:
    end = content.find(b"}")
    if not content.startswith(b"\x93NUMPY") or end < 0:
        raise _NotApplicable
    header = content[:end + 1]
    edit = rng.choice((text_number, text_number, _npy_dtype))
    new, what = edit(header, rng)
    return new + content[end + 1:], f"npy header {what}"


def _npy_dtype(header: bytes, rng: random.Random) -> tuple[bytes, str]:
    match = re.search(rb"'descr': '([^']*)'", header)
    if not match:
        raise _NotApplicable
    new = rng.choice((b"<f8", b"<i8", b"|b1", b"<f2", b">f4", b"|O", b"<U3", b"|V8", b"<c8", b"x"))
    return header[:match.start(1)] + new + header[match.end(1):], f"dtype {match.group(1)!r} -> {new!r}"


# --- PNG: one chunk's data (IHDR's width, height, depth; IDAT's stream), with its CRC made right again -------------

def png_chunk(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    chunks, at = [], 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        chunks.append((at, length, data[at + 4:at + 8]))
        at += 12 + length
    if not data.startswith(b"\x89PNG") or not chunks:
        raise _NotApplicable
    at, length, kind = rng.choice(chunks)
    body = data[at + 8:at + 8 + length]
    if kind == b"IHDR" and len(body) == 13:
        field = rng.choice(((0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (12, 1)))
        value = rng.choice((0, 1, 2, 3, 4, 6, 16, 255, 65535, 2**31 - 1)) % 2 ** (8 * field[1])
        body = body[:field[0]] + value.to_bytes(field[1], "big") + body[field[0] + field[1]:]
        what = f"IHDR byte {field[0]} -> {value}"
    else:
        body, what = rng.choice(BYTE_MUTATIONS)(body, rng) if body else (b"\0", "filled")
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:at] + chunk + data[at + 12 + length:], f"PNG {kind.decode(errors='replace')}: {what}"


STRUCTURED: dict[str, tuple[Mutation, ...]] = {
    "bytes": (),
    "binary": (header_int,),
    "ubjson": (ubjson_int, ubjson_int, header_int),
    "text": TEXT_MUTATIONS,
    "json": (json_value, json_value) + TEXT_MUTATIONS,
    "onnx": (onnx_edit,),
    "zip": (zip_member,),
    "png": (png_chunk,),
}
