"""A TfIdfVectorizer of an integer pool over a static input written as comparisons of shifted slices.

TVM 0.27's importer has no converter for TfIdfVectorizer. ONNX counts, per row of the input ([C] or [N, C]), each
pool n-gram of a length from min_gram_length to max_gram_length: a k-gram g occurs at start s with skip distance d
(1 .. max_skip_count + 1) where X[s + j d] = g[j] for every j < k; unigrams are counted at distance 1 only (ONNX's
reference and ONNX Runtime walk a trie, counting them once). Along a static row these are constant patterns: the k
slices X[j d : j d + C - (k - 1) d] compared with the pool's k columns (Equal, And), the matches summed along the
row (a MatMul with ones), and the counts of the n-grams scattered to their output coordinates (ngram_indexes) by a
constant 0/1 matrix. A pool n-gram listed twice is counted at its last coordinate only, as the trie keeps it. IDF
then gives the weight (1 without weights) where the count is positive, TFIDF the count times the weight; the
weights are read at the output coordinate, as ONNX's reference and ONNX Runtime do. String pools, and inputs whose
shape or type does not allow this, are left as they are, and the support check (kiln.compiler.backends.tvm.ops)
names why with `tfidf_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx

_INT32, _INT64 = 6, 7
_MODES = ("TF", "IDF", "TFIDF")


def tfidf_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]],
                  types: Mapping[str, int]) -> str | None:
    """Why tfidf_vectorizer leaves the TfIdfVectorizer `node` as it is; None where it rewrites it. `dims` holds the
    values' shapes (None: symbolic), `types` their ONNX element types."""
    attributes = _attributes(node)
    if attributes.get("pool_strings"):
        return "pool_strings (string input; kiln counts integer pools only)"
    if not attributes.get("pool_int64s"):
        return "no pool_int64s"
    if attributes.get("mode") not in _MODES:
        return f"mode {attributes.get('mode')!r}, not one of {', '.join(_MODES)}"
    if not 1 <= attributes.get("min_gram_length", 0) <= attributes.get("max_gram_length", 0):
        return "min_gram_length under 1 or over max_gram_length"
    if attributes.get("max_skip_count", 0) < 0:
        return "negative max_skip_count"
    if types.get(node.input[0]) not in (_INT32, _INT64):
        return "input not int32 or int64"
    shape = dims.get(node.input[0])
    if shape is None or None in shape:
        return "input shape not static; pin the input shapes"
    if len(shape) not in (1, 2) or 0 in shape:
        return f"input shape {list(shape)}, not a non-empty [C] or [N, C]"
    indexes = attributes.get("ngram_indexes", [])
    if not indexes or len(indexes) < len(_ngrams(attributes)) or min(indexes) < 0:
        return "ngram_indexes shorter than the pool's n-grams or negative"
    if attributes.get("mode") != "TF" and 0 < len(attributes.get("weights", [])) <= max(indexes):
        return "fewer weights than output coordinates"
    return None


def tfidf_vectorizer(graph: Graph) -> Graph:
    dims = static_dims(graph.body.graph)
    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "TfIdfVectorizer") or tfidf_refusal(node, dims, types):
            return None
        return _rewrite(node, dims[node.input[0]], types[node.input[0]])

    return rewrite_nodes(graph, replace)


def _attributes(node: "onnx.NodeProto") -> dict:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}


def _ngrams(attributes: dict) -> list[tuple[int, ...]]:
    """The pool's n-grams in the order of their ngram_indexes: ngram_counts gives where each length starts."""
    pool, starts = list(attributes["pool_int64s"]), list(attributes.get("ngram_counts", []))
    grams = []
    for length, (start, end) in enumerate(zip(starts, starts[1:] + [len(pool)]), start=1):
        grams += [tuple(pool[i:i + length]) for i in range(start, start + (end - start) // length * length, length)]
    return grams


def _counted(attributes: dict, dtype: int) -> dict[int, dict[tuple[int, ...], int]]:
    """length -> {n-gram: its output coordinate} of the n-grams counted: those of a counted length, the last place
    of each, without those an input of `dtype` cannot hold (they match nothing)."""
    low, high = attributes["min_gram_length"], attributes["max_gram_length"]
    bounds = np.iinfo(np.int32 if dtype == _INT32 else np.int64)
    counted: dict[int, dict[tuple[int, ...], int]] = {}
    for gram, index in zip(_ngrams(attributes), attributes["ngram_indexes"]):
        if low <= len(gram) <= high and all(bounds.min <= v <= bounds.max for v in gram):
            counted.setdefault(len(gram), {})[gram] = index
    return counted


def _rewrite(node: "onnx.NodeProto", shape: tuple[int, ...], dtype: int):
    from onnx import helper

    attributes = _attributes(node)
    integer = np.int32 if dtype == _INT32 else np.int64
    width, size = shape[-1], max(attributes["ngram_indexes"]) + 1
    stem = node.name or node.output[0]
    rows = shape[:-1] + (1, width)  # the input with an axis the n-grams broadcast along
    nodes = [helper.make_node("Reshape", [node.input[0], f"{stem}_rows"], [f"{stem}_x"])]
    constants = {f"{stem}_rows": np.array(rows, np.int64)}
    terms = []
    for length, grams in sorted(_counted(attributes, dtype).items()):
        pool = np.array(list(grams), integer).reshape(len(grams), length)
        scatter = np.zeros((len(grams), size), np.float32)
        scatter[np.arange(len(grams)), list(grams.values())] = 1
        constants[f"{stem}_scatter{length}"] = scatter
        for j in range(length):
            constants[f"{stem}_pool{length}_{j}"] = pool[:, j:j + 1]
        distances = range(1, attributes.get("max_skip_count", 0) + 2) if length > 1 else (1,)
        for distance in distances:
            starts = width - (length - 1) * distance
            if starts <= 0:
                continue
            tag = f"{length}_{distance}"
            matched = _matches(stem, tag, length, distance, starts, nodes, constants)
            found, count = f"{stem}_found{tag}", f"{stem}_count{tag}"
            nodes += [helper.make_node("Cast", [matched], [found], to=1),
                      helper.make_node("MatMul", [found, f"{stem}_ones{starts}"], [count]),
                      helper.make_node("MatMul", [count, f"{stem}_scatter{length}"], [f"{stem}_term{tag}"])]
            constants[f"{stem}_ones{starts}"] = np.ones(starts, np.float32)
            terms.append(f"{stem}_term{tag}")
    if not terms:
        constants[f"{stem}_term"] = np.zeros(shape[:-1] + (size,), np.float32)
        terms.append(f"{stem}_term")
    for i in range(1, len(terms)):
        nodes.append(helper.make_node("Add", [terms[i - 1], terms[i]], [f"{stem}_sum{i}"]))
        terms[i] = f"{stem}_sum{i}"
    weighted, weight_constants = _weigh(node, attributes, terms[-1], size)
    return nodes + weighted, {**constants, **weight_constants}


def _matches(stem: str, tag: str, length: int, distance: int, starts: int, nodes: list, constants: dict) -> str:
    """Append the nodes that compare the input's shifted slices with the pool's columns: [..., n-grams, starts]
    bools, true where the n-gram occurs at that start with that distance; their output."""
    from onnx import helper

    matched = None
    for j in range(length):
        name = f"{stem}_slice{tag}_{j}"
        nodes += [helper.make_node("Slice", [f"{stem}_x", f"{name}_start", f"{name}_end", f"{stem}_axis"], [name]),
                  helper.make_node("Equal", [name, f"{stem}_pool{length}_{j}"], [f"{name}_equal"])]
        constants.update({f"{name}_start": np.array([j * distance], np.int64),
                          f"{name}_end": np.array([j * distance + starts], np.int64),
                          f"{stem}_axis": np.array([-1], np.int64)})
        if matched is not None:
            nodes.append(helper.make_node("And", [matched, f"{name}_equal"], [f"{name}_all"]))
        matched = f"{name}_equal" if matched is None else f"{name}_all"
    return matched


def _weigh(node: "onnx.NodeProto", attributes: dict, counts: str, size: int):
    """The node that writes the output from the counts by the mode, and its constants."""
    from onnx import helper

    stem, output, mode = node.name or node.output[0], node.output[0], attributes["mode"]
    weights = np.array(attributes.get("weights") or [1.0] * size, np.float32)[:size]
    if mode == "TF":
        return [helper.make_node("Identity", [counts], [output], name=node.name)], {}
    if mode == "TFIDF":
        return [helper.make_node("Mul", [counts, f"{stem}_weights"], [output], name=node.name)], \
            {f"{stem}_weights": weights}
    return ([helper.make_node("Greater", [counts, f"{stem}_zero"], [f"{stem}_present"]),
             helper.make_node("Where", [f"{stem}_present", f"{stem}_weights", f"{stem}_zero"], [output],
                              name=node.name)],
            {f"{stem}_weights": weights, f"{stem}_zero": np.array(0, np.float32)})
