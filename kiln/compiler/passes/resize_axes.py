"""A Resize with `axes` or a keep_aspect_ratio_policy written in the full-rank form TVM's converter computes exactly.

The converter reads scales, sizes and roi as given for every dim and ignores both attributes. With a static input
shape and constant scales or sizes, ONNX's meaning is a plain Resize: the given axes' values laid into scale 1, the
input's own size, and roi 0..1 for the other dims (a run-time roi is widened by a Gather from it and those
bounds; roi is read by tf_crop_and_resize only, so other modes drop it). A policy turns sizes into one scale over
the axes (the smallest ratio for not_larger, the largest for not_smaller) and sizes round_half_up(scale * size);
ONNX then maps coordinates by that scale, the converter by output / input size: the two agree only where every
scale * size is whole, so only there is it rewritten (elsewhere the node is left for the refusal).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_shapes


def resize_axes(graph: Graph) -> Graph:
    from onnx import helper, numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in graph.body.graph.initializer}
    shapes = static_shapes(graph.body.graph)
    types = element_types(graph.body.graph)

    def given(node, index: int) -> str:
        return node.input[index] if index < len(node.input) else ""

    def replace(node):
        if not is_onnx_op(node, "Resize") or node.input[0] not in shapes:
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        policy = attributes.get("keep_aspect_ratio_policy", b"stretch")
        if "axes" not in attributes and policy == b"stretch":
            return None
        shape = shapes[node.input[0]]
        rank = len(shape)
        axes = [axis + rank if axis < 0 else axis for axis in attributes.get("axes", range(rank))]
        roi, scales, sizes = given(node, 1), given(node, 2), given(node, 3)
        scales, sizes = (name if name in initializers and initializers[name].size else None for name in (scales, sizes))
        # a policy with scales is a model ONNX rejects; axes that do not match the values, one too
        if (scales is None) == (sizes is None) or (scales is not None and policy != b"stretch"):
            return None
        if initializers[scales or sizes].size != len(axes) or sorted(set(axes)) != sorted(axes) \
                or not set(axes) <= set(range(rank)):
            return None
        stem = node.name or node.output[0]
        nodes, constants, inputs = [], {}, [node.input[0], "", "", ""]
        if scales is not None:
            full = np.ones(rank, initializers[scales].dtype)
            full[axes] = initializers[scales]
            inputs[2] = f"{stem}_scales"
            constants[inputs[2]] = full
        else:
            full = np.array(shape, np.int64)
            full[axes] = initializers[sizes]
            if policy != b"stretch":
                if 0 in (shape[axis] for axis in axes):
                    return None
                ratios = [Fraction(int(full[axis]), shape[axis]) for axis in axes]
                scale = min(ratios) if policy == b"not_larger" else max(ratios)
                if any((scale * shape[axis]).denominator != 1 for axis in axes):
                    return None
                full[axes] = [int(scale * shape[axis]) for axis in axes]
            inputs[3] = f"{stem}_sizes"
            constants[inputs[3]] = full.astype(initializers[sizes].dtype)
        if roi in initializers and not initializers[roi].size:
            roi = ""
        if roi and attributes.get("coordinate_transformation_mode") == b"tf_crop_and_resize":
            # for each of the 2 * rank bounds, its index in [roi..., 0, 1]: the other dims read the 0 and the 1
            length = 2 * len(axes)
            picks = [length] * rank + [length + 1] * rank
            for i, axis in enumerate(axes):
                picks[axis], picks[rank + axis] = i, len(axes) + i
            if roi in initializers and initializers[roi].size == length:
                inputs[1] = f"{stem}_roi"
                bounds = np.concatenate([initializers[roi], [0, 1]]).astype(initializers[roi].dtype)
                constants[inputs[1]] = bounds[picks]
            elif roi not in initializers and shapes.get(roi) == (length,) and types.get(roi):
                names = {role: f"{stem}_roi_{role}" for role in ("bounds", "padded", "picks")}
                inputs[1] = f"{stem}_roi"
                nodes += [helper.make_node("Concat", [roi, names["bounds"]], [names["padded"]], axis=0),
                          helper.make_node("Gather", [names["padded"], names["picks"]], [inputs[1]])]
                constants[names["bounds"]] = np.array([0, 1], helper.tensor_dtype_to_np_dtype(types[roi]))
                constants[names["picks"]] = np.array(picks, np.int64)
            else:
                return None
        kept = [a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy")]
        while not inputs[-1]:
            inputs.pop()
        resize = helper.make_node("Resize", inputs, list(node.output), name=node.name, domain=node.domain)
        resize.attribute.extend(kept)
        return nodes + [resize], constants

    return rewrite_nodes(graph, replace)
