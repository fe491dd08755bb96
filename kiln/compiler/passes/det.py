"""A Det of small static matrices written as its Leibniz expansion: gathers, products and one signed sum.

TVM 0.27's importer has no converter for Det. For an n x n matrix (batched over leading dims) the determinant is
the sum over the n! permutations p of sign(p) * a[p(0), 0] * ... * a[p(n-1), n-1]: per column j one Gather of the
column and one of its rows p(j) for every p, n - 1 Muls of those [..., n!] tensors, and a MatMul with the signs.
Exact where a product and a sum are (no pivoting, no division); the graph grows with n!, so matrices over
MAX_SIZE x MAX_SIZE, or of a size not static, are left as they are, and the support check
(kiln.compiler.backends.tvm.ops) names why with `det_refusal`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx

MAX_SIZE = 4  # 24 permutations


def det_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why expand_det leaves the Det `node` as it is; None where it expands it. `dims` holds the values' shapes
    (None: symbolic)."""
    shape = dims.get(node.input[0])
    if shape is None or None in shape:
        return "input shape not static; pin the input shapes"
    if len(shape) < 2 or shape[-1] != shape[-2]:
        return f"input {list(shape)} is not of square matrices"
    if not 0 < shape[-1] <= MAX_SIZE:
        return f"{shape[-1]} x {shape[-1]} matrices; kiln expands 1 x 1 to {MAX_SIZE} x {MAX_SIZE}"
    return None


def expand_det(graph: Graph) -> Graph:
    from onnx import helper

    dims = static_dims(graph.body.graph)
    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "Det") or det_refusal(node, dims):
            return None
        dtype = helper.tensor_dtype_to_np_dtype(types[node.input[0]]) if types.get(node.input[0]) else None
        return None if dtype is None else _leibniz(node, dims[node.input[0]], dtype)

    return rewrite_nodes(graph, replace)


def _leibniz(node: "onnx.NodeProto", shape: tuple[int, ...], dtype: np.dtype) -> tuple[list, dict]:
    """The nodes that compute the Det `node` of an input of `shape` and element type `dtype`, and the constants
    they read."""
    from onnx import helper

    size, rank = shape[-1], len(shape)
    permutations = list(itertools.permutations(range(size)))
    stem = node.name or node.output[0]
    constants = {f"{stem}_signs": np.array([_sign(p) for p in permutations], dtype)}
    nodes, product = [], None
    for column in range(size):
        constants[f"{stem}_column{column}"] = np.array(column, np.int64)
        constants[f"{stem}_rows{column}"] = np.array([p[column] for p in permutations], np.int64)
        nodes += [helper.make_node("Gather", [node.input[0], f"{stem}_column{column}"], [f"{stem}_values{column}"],
                                   axis=rank - 1),
                  helper.make_node("Gather", [f"{stem}_values{column}", f"{stem}_rows{column}"],
                                   [f"{stem}_factors{column}"], axis=rank - 2)]
        if product is not None:
            nodes.append(helper.make_node("Mul", [product, f"{stem}_factors{column}"], [f"{stem}_product{column}"]))
        product = f"{stem}_factors{column}" if product is None else f"{stem}_product{column}"
    nodes.append(helper.make_node("MatMul", [product, f"{stem}_signs"], [node.output[0]], name=node.name))
    return nodes, constants


def _sign(permutation: tuple[int, ...]) -> int:
    """+1 for an even permutation, -1 for an odd one (by its count of inversions)."""
    inversions = sum(a > b for a, b in itertools.combinations(permutation, 2))
    return -1 if inversions % 2 else 1
