"""NonMaxSuppression on CPU as ONNX Runtime computes it, replacing TOPI's all-class NMS in legalization.

TOPI sorts every score row in full, NMS-es each (batch, class) in a loop that starts a parallel region per kept
box, and collects serially: 20-30x ONNX Runtime's time, and a detector's post-processing took longer than its
convolutions. Here each (batch, class) row, one parallel task each, keeps its candidates above the score
threshold, heap-sorts them (score descending, ties by box index) and keeps each in turn that overlaps no kept box
by more than the IoU threshold, up to max_output_boxes_per_class:

    for bc in parallel(batch * classes):
        order[bc, :n] = boxes with scores[bc, i] > score_threshold           # n candidates, index order
        heapsort order[bc, :n] by (score desc, index asc)
        for i in order[bc, :n] while kept[bc] < keep:
            if IoU(i, every picked[bc, :kept[bc]]) <= iou_threshold: picked[bc, kept[bc]++] = i
    rows = (b, c, picked[bc, k]) for bc, k in order; total = sum(kept)

IoU as ONNX Runtime's SuppressByIOU: corners in any order, a box of no area never suppresses nor is suppressed;
a box is suppressed when its IoU is strictly above the threshold. Rows past `total` are left unwritten: the
legalization cuts them off."""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.script import tirx as T


def _prim_func(batch: int, classes: int, count: int, keep: int):
    rows = batch * classes

    @T.prim_func(private=True, check_well_formed=False)
    def nms(boxes: T.Buffer((batch, count, 4), "float32"), scores: T.Buffer((batch, classes, count), "float32"),
            iou_threshold: T.Buffer((), "float32"), score_threshold: T.Buffer((), "float32"),
            selected: T.Buffer((rows * keep, 3), "int64"), total: T.Buffer((1,), "int64")):
        T.func_attr({"tirx.noalias": True, "kiln.rule": "nms"})
        order = T.alloc_buffer((rows, count), "int32")
        picked = T.alloc_buffer((rows, keep), "int32")
        kept = T.alloc_buffer((rows,), "int32")
        for bc in T.parallel(rows):
            b = bc // classes
            c = bc % classes
            n = T.alloc_buffer((1,), "int32", scope="local")
            n[0] = 0
            for i in range(count):
                if scores[b, c, i] > score_threshold[()]:
                    order[bc, n[0]] = i
                    n[0] = n[0] + 1
            # Heapsort: a max-heap of the box that comes last (lowest score, then highest index).
            root = T.alloc_buffer((1,), "int32", scope="local")
            child = T.alloc_buffer((1,), "int32", scope="local")
            end = T.alloc_buffer((1,), "int32", scope="local")
            swap = T.alloc_buffer((1,), "int32", scope="local")
            for step in range(n[0] // 2 + n[0] - 1):
                if step < n[0] // 2:  # heapify from the last parent down
                    root[0] = n[0] // 2 - 1 - step
                    end[0] = n[0]
                else:  # move the heap's last box to the end, shrink the heap
                    end[0] = n[0] - 1 - (step - n[0] // 2)
                    swap[0] = order[bc, 0]
                    order[bc, 0] = order[bc, end[0]]
                    order[bc, end[0]] = swap[0]
                    root[0] = 0
                while root[0] * 2 + 1 < end[0]:
                    child[0] = root[0] * 2 + 1
                    if child[0] + 1 < end[0]:
                        if (scores[b, c, order[bc, child[0] + 1]] < scores[b, c, order[bc, child[0]]]
                                or (scores[b, c, order[bc, child[0] + 1]] == scores[b, c, order[bc, child[0]]]
                                    and order[bc, child[0] + 1] > order[bc, child[0]])):
                            child[0] = child[0] + 1
                    if (scores[b, c, order[bc, child[0]]] < scores[b, c, order[bc, root[0]]]
                            or (scores[b, c, order[bc, child[0]]] == scores[b, c, order[bc, root[0]]]
                                and order[bc, child[0]] > order[bc, root[0]])):
                        swap[0] = order[bc, root[0]]
                        order[bc, root[0]] = order[bc, child[0]]
                        order[bc, child[0]] = swap[0]
                        root[0] = child[0]
                    else:
                        root[0] = end[0]
            kept[bc] = 0
            suppressed = T.alloc_buffer((1,), "int32", scope="local")
            for t in range(n[0]):
                if kept[bc] < keep:
                    i = order[bc, t]
                    suppressed[0] = 0
                    for s in range(kept[bc]):
                        j = picked[bc, s]
                        x0 = T.max(T.min(boxes[b, i, 1], boxes[b, i, 3]), T.min(boxes[b, j, 1], boxes[b, j, 3]))
                        x1 = T.min(T.max(boxes[b, i, 1], boxes[b, i, 3]), T.max(boxes[b, j, 1], boxes[b, j, 3]))
                        y0 = T.max(T.min(boxes[b, i, 0], boxes[b, i, 2]), T.min(boxes[b, j, 0], boxes[b, j, 2]))
                        y1 = T.min(T.max(boxes[b, i, 0], boxes[b, i, 2]), T.max(boxes[b, j, 0], boxes[b, j, 2]))
                        inter = (x1 - x0) * (y1 - y0)
                        area_i = T.fabs((boxes[b, i, 2] - boxes[b, i, 0]) * (boxes[b, i, 3] - boxes[b, i, 1]))
                        area_j = T.fabs((boxes[b, j, 2] - boxes[b, j, 0]) * (boxes[b, j, 3] - boxes[b, j, 1]))
                        union = area_i + area_j - inter
                        if (x1 > x0 and y1 > y0 and area_i > T.float32(0) and area_j > T.float32(0)
                                and union > T.float32(0) and inter / union > iou_threshold[()]):
                            suppressed[0] = 1
                    if suppressed[0] == 0:
                        picked[bc, kept[bc]] = i
                        kept[bc] = kept[bc] + 1
        row = T.alloc_buffer((1,), "int64", scope="local")
        row[0] = T.int64(0)
        for bc in range(rows):
            for s in range(kept[bc]):
                selected[row[0] + s, 0] = T.Cast("int64", bc // classes)
                selected[row[0] + s, 1] = T.Cast("int64", bc % classes)
                selected[row[0] + s, 2] = T.Cast("int64", picked[bc, s])
            row[0] = row[0] + T.Cast("int64", kept[bc])
        total[0] = row[0]

    return nms


def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """relax.vision.all_class_non_max_suppression (ONNX output format) as kiln's kernel: (selected indices cut to
    the rows selected, their count), the tuple TVM's own legalization returns."""
    boxes, scores, max_boxes, iou_threshold, score_threshold = call.args
    batch, classes, count = (int(d) for d in scores.ty.shape)
    keep = min(max(int(max_boxes.value.numpy()), 0), count) if isinstance(max_boxes, tvm.ir.GenericConst) else count
    func = bb.add_func(_prim_func(batch, classes, count, keep), "non_max_suppression")
    out = bb.emit(relax.call_tir(func, [boxes, scores, iou_threshold, score_threshold],
                                 [relax.TensorType((batch * classes * keep, 3), "int64"),
                                  relax.TensorType((1,), "int64")]))
    total = bb.emit(relax.TupleGetItem(out, 1))
    end = bb.emit_te(lambda n: te.compute((2,), lambda i: tirx.if_then_else(i == 0, n[0], tirx.const(3, "int64"))),
                     total)
    zeros, ones = (relax.const([value, value], "int64") for value in (0, 1))
    selected = bb.emit(relax.op.dynamic_strided_slice(relax.TupleGetItem(out, 0), zeros, end, ones))
    return relax.Tuple([selected, total])
