"""A Col2Im of a static-shape input written as a Gather from an index table and a sum: a constant table where
image_shape and block_shape are constants, one computed from them where they are known at run time only.

TVM 0.27's importer has no converter for Col2Im. ONNX defines it as the sum of scatters that inverts im2col: the
input [N, C * K, L] holds, for each of the K = prod(block_shape) offsets in a block and each of the L block
positions, the value added to image element `position * strides - pads_begin + offset * dilations` (dropped where
that falls outside image_shape). For a given image element and offset at most one position lands there, so each
element of the [N, C, prod(image_shape)] result is the sum of at most K known input elements: a table of their
indices (padded with the index of a zero appended to the input) gathers them and a ReduceSum adds them. A product
with a 0/1 matrix would compute the same sums for finite inputs, but 0 * inf is NaN, and one infinite input would
spoil every element. Constant tables over MAX_TABLE elements, inputs of symbolic shape and inputs that do not
match constant shapes are left as they are, and the support check (kiln.compiler.backends.tvm.ops) names why with
`col2im_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, is_onnx_op, rewrite_nodes

if TYPE_CHECKING:
    import onnx

MAX_TABLE = 1 << 24  # elements of the index table


def col2im_refusal(node: "onnx.NodeProto", values: Mapping[str, "onnx.TensorProto"],
                   dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why col2im leaves the Col2Im `node` as it is; None where it rewrites it. `values` holds the constants known
    here, `dims` the values' shapes (None: symbolic)."""
    shape, lengths = dims.get(node.input[0]), [dims.get(name) for name in node.input[1:3]]
    if shape is None or None in shape or None in lengths or any(None in length for length in lengths):
        return "input shape not static; pin the input shapes"
    if len(shape) != 3:
        return f"input of rank {len(shape)} (ONNX's Col2Im takes [N, C * prod(block_shape), L])"
    rank = lengths[0][0] if lengths[0] else 0
    if not rank or _attributes(node, rank) is None or lengths != [[rank], [rank]]:
        return "image_shape, block_shape, dilations, pads and strides of different lengths"
    if not all(name in values for name in node.input[1:3]):
        return None
    geometry = _geometry(node, values)
    image, block, _, _, _ = geometry
    blocks = _blocks(*geometry)
    if min(image) < 1 or min(block) < 1 or shape[1] % int(np.prod(block)) or shape[2] != int(np.prod(blocks)) \
            or min(blocks) < 1:
        return f"input of shape {list(shape)} does not hold the blocks of image {image} and block {block}"
    size = int(np.prod(image)) * _most_sums(geometry)
    if size > MAX_TABLE:
        return f"index table of {size} elements, over the {MAX_TABLE} kiln builds"
    return None


def col2im(graph: Graph) -> Graph:
    values = {t.name: t for t in graph.body.graph.initializer}
    dims = declared_dims(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "Col2Im") or col2im_refusal(node, values, dims):
            return None
        if all(name in values for name in node.input[1:3]):
            return _constant_table(node, dims[node.input[0]], _geometry(node, values))
        return _computed_table(node, dims[node.input[0]], dims[node.input[1]][0])

    return rewrite_nodes(graph, replace)


def _constant_table(node: "onnx.NodeProto", shape: Sequence[int], geometry: "Geometry"):
    """The columns [N, C, K * L] and a zero, gathered at the constant table's indices, summed, reshaped."""
    from onnx import helper

    batch, channels_blocks, length = shape
    image, block = geometry[:2]
    kernel = int(np.prod(block))
    channels = channels_blocks // kernel
    stem = node.name or node.output[0]
    names = {role: f"{stem}_{role}" for role in ("columns", "columns_shape", "padded", "pads", "table",
                                                  "gathered", "axes", "sums", "image_shape")}
    nodes = [
        helper.make_node("Reshape", [node.input[0], names["columns_shape"]], [names["columns"]]),
        helper.make_node("Pad", [names["columns"], names["pads"]], [names["padded"]]),
        helper.make_node("Gather", [names["padded"], names["table"]], [names["gathered"]], axis=2),
        helper.make_node("ReduceSum", [names["gathered"], names["axes"]], [names["sums"]], keepdims=0),
        helper.make_node("Reshape", [names["sums"], names["image_shape"]], [node.output[0]], name=node.name),
    ]
    constants = {
        names["columns_shape"]: np.array([batch, channels, kernel * length], np.int64),
        names["pads"]: np.array([0, 0, 0, 0, 0, 1], np.int64),
        names["table"]: _table(geometry),
        names["axes"]: np.array([3], np.int64),
        names["image_shape"]: np.array([batch, channels, *image], np.int64),
    }
    return nodes, constants


def _computed_table(node: "onnx.NodeProto", shape: Sequence[int], rank: int):
    """The same sums where image_shape or block_shape is known at run time only: the index table is computed, laid
    out [C, image dims..., block offset dims...] (one offset per block dim, K = prod(block_shape) in all, a
    position's index found from the image index and the offset where the stride divides it), so that the
    gathered [N, C, image..., offsets...] summed over the offsets is the image, with no reshape to a computed
    shape (TVM's importer takes a Reshape's shape only as a constant)."""
    batch, channels_blocks, length = shape
    dilations, pads, strides = _attributes(node, rank)
    b = _Builder(node.name or node.output[0])
    image = [b.op("Gather", node.input[1], b.const(i)) for i in range(rank)]
    block = [b.op("Gather", node.input[2], b.const(i)) for i in range(rank)]
    blocks = [b.op("Add", b.op("Div", b.op("Sub", b.op("Add", image[i], pads[i] + pads[rank + i] + dilations[i] - 1),
                                           b.op("Mul", block[i], dilations[i])), strides[i]), 1)
              for i in range(rank)]
    kernel = b.product(block)
    width = 1 + 2 * rank  # the table's dims
    channel = b.op("Range", 0, b.op("Div", channels_blocks, kernel), 1)
    total = b.op("Unsqueeze", b.op("Mul", channel, b.op("Mul", kernel, length)), b.const(list(range(1, width))))
    inside = None
    for i in range(rank):
        place = b.const([axis for axis in range(width) if axis not in (1 + i, 1 + rank + i)])
        at = b.op("Unsqueeze", b.op("Range", 0, image[i], 1), b.const([1]))
        offset = b.op("Range", 0, block[i], 1)
        step = b.op("Sub", b.op("Add", at, pads[i]), b.op("Mul", offset, dilations[i]))
        clamped = b.op("Max", step, 0)
        position = b.op("Div", clamped, strides[i])
        divides = b.op("Equal", b.op("Mod", clamped, strides[i]), 0)
        found = b.op("And", b.op("And", b.op("Equal", step, clamped), divides), b.op("Less", position, blocks[i]))
        index = b.op("Add", b.op("Mul", offset, b.op("Mul", b.product(block[i + 1:]), length)),
                     b.op("Mul", position, b.product(blocks[i + 1:])))
        total = b.op("Add", total, b.op("Unsqueeze", index, place))
        found = b.op("Unsqueeze", found, place)
        inside = found if inside is None else b.op("And", inside, found)
    zero = channels_blocks * length  # the appended zero's index; Min keeps shapes that do not match in bounds
    table = b.op("Min", b.op("Where", inside, total, zero), zero)
    columns = b.op("Reshape", node.input[0], b.const([batch, zero]))
    padded = b.op("Pad", columns, b.const([0, 0, 0, 1]))
    gathered = b.op("Gather", padded, table, axis=1)
    b.op("ReduceSum", gathered, b.const(list(range(2 + rank, 2 + 2 * rank))), output=node.output[0], name=node.name,
         keepdims=0)
    return b.nodes, b.constants


class _Builder:
    """Nodes under one stem, their outputs and int64 constants named by a counter; ints given as inputs become
    int64 scalar constants."""

    def __init__(self, stem: str):
        self.stem, self.nodes, self.constants, self._count = stem, [], {}, 0

    def _name(self) -> str:
        self._count += 1
        return f"{self.stem}_{self._count}"

    def const(self, value) -> str:
        name = self._name()
        self.constants[name] = np.array(value, np.int64)
        return name

    def op(self, op_type: str, *inputs, output: str | None = None, name: str = "", **attributes) -> str:
        from onnx import helper

        output = output or self._name()
        names = [self.const(value) if isinstance(value, int) else value for value in inputs]
        self.nodes.append(helper.make_node(op_type, names, [output], name=name, **attributes))
        return output

    def product(self, factors: Sequence[str]) -> str:
        """The product of scalar values (1 for none)."""
        result = self.const(1) if not factors else factors[0]
        for factor in factors[1:]:
            result = self.op("Mul", result, factor)
        return result


Geometry = tuple[list[int], list[int], list[int], list[int], list[int]]  # image, block, dilations, pads, strides


def _attributes(node: "onnx.NodeProto", rank: int) -> tuple[list[int], list[int], list[int]] | None:
    """The node's dilations, pads and strides for `rank` image dims, ONNX's defaults where not given; None where
    their lengths are not the rank's."""
    from onnx import helper

    given = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
    dilations, pads, strides = (given.get("dilations", [1] * rank), given.get("pads", [0] * 2 * rank),
                                given.get("strides", [1] * rank))
    if (len(dilations), len(pads), len(strides)) != (rank, 2 * rank, rank):
        return None
    return dilations, pads, strides


def _geometry(node: "onnx.NodeProto", values: Mapping[str, "onnx.TensorProto"]) -> Geometry:
    """The node's image_shape, block_shape, dilations, pads and strides (lengths checked by col2im_refusal)."""
    from onnx import numpy_helper

    image, block = (numpy_helper.to_array(values[name]).astype(np.int64).reshape(-1).tolist()
                    for name in node.input[1:3])
    return (image, block, *_attributes(node, len(image)))


def _blocks(image, block, dilations, pads, strides) -> list[int]:
    """How many block positions each image dim holds."""
    rank = len(image)
    return [(image[i] + pads[i] + pads[rank + i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
            for i in range(rank)]


def _axis_sources(geometry: Geometry, axis: int) -> list[list[tuple[int, int]]]:
    """For each element along one image dim, the (block offset, block position) pairs along that dim added into it,
    in order of the offset. An element's sources are the products of its dims' pairs (the dims are independent)."""
    image, block, dilations, pads, strides = geometry
    sources: list[list[tuple[int, int]]] = [[] for _ in range(image[axis])]
    blocks = _blocks(*geometry)[axis]
    for offset in range(block[axis]):
        for position in range(blocks):
            at = position * strides[axis] - pads[axis] + offset * dilations[axis]
            if 0 <= at < image[axis]:
                sources[at].append((offset, position))
    return sources


def _most_sums(geometry: Geometry) -> int:
    """The most input elements one image element sums: the table's width (at least 1)."""
    return int(np.prod([max(1, max(map(len, _axis_sources(geometry, axis)), default=0))
                        for axis in range(len(geometry[0]))]))


def _table(geometry: Geometry) -> np.ndarray:
    """[prod(image), most sums] indices k * L + l into the columns, k the block offset and l the block position
    (row-major), in order of k; the appended zero (index K * L) fills the rest."""
    image, block = geometry[:2]
    blocks = _blocks(*geometry)
    rank, length = len(image), int(np.prod(blocks))
    k_strides = [int(np.prod(block[i + 1:])) * length for i in range(rank)]
    l_strides = [int(np.prod(blocks[i + 1:])) for i in range(rank)]
    total, valid = np.zeros((), np.int64), np.ones((), bool)
    for axis in range(rank):
        sources = _axis_sources(geometry, axis)
        width = max(1, max(map(len, sources), default=0))
        index, present = np.zeros((image[axis], width), np.int64), np.zeros((image[axis], width), bool)
        for at, pairs in enumerate(sources):
            for j, (offset, position) in enumerate(pairs):
                index[at, j] = offset * k_strides[axis] + position * l_strides[axis]
                present[at, j] = True
        # broadcast the dims' tables against each other: [n0, w0, n1, w1, ...], reordered to [n0, n1, ..., w0, ...]
        total = np.add.outer(total, index)
        valid = np.logical_and.outer(valid, present)
    order = [2 * i for i in range(rank)] + [2 * i + 1 for i in range(rank)]
    table = np.where(valid, total, int(np.prod(block)) * length).transpose(order)
    return table.reshape(int(np.prod(image)), -1)
