"""kiln's detection kernels. NonMaxSuppression (kernels/nms.py) against onnx's expected outputs and ONNX Runtime:
ties, flipped corners, centre boxes, boxes of no area, several batches and classes, score and IoU thresholds,
output limits (the suite's cases pass their limits as graph inputs, which kiln refuses; here they become
constants). RoiAlign (kernels/roi_align.py) against ONNX Runtime: ROIs over the edges, two images, both
coordinate modes, its tables computed once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import kiln
from kiln.testing.conformance import load_cases, read_data
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_SUITE = [case for case in load_cases() if case.op == "NonMaxSuppression"]


def _with_constant_limits(model: onnx.ModelProto, names: list[str], values: list) -> onnx.ModelProto:
    """`model` with every input but the boxes and scores turned into an initializer of its case's value."""
    limits = dict(zip(names[2:], values[2:]))
    kept = [i for i in model.graph.input if i.name not in limits]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in limits.items())
    return model


@pytest.mark.parametrize("case", _SUITE, ids=[case.name for case in _SUITE])
def test_suite_case_with_constant_limits(case, tmp_path: Path):
    names, values, _, expected = read_data(case)
    model = _with_constant_limits(onnx.load(str(case.folder / "model.onnx")), names, values)
    path = tmp_path / "nms.onnx"
    onnx.save(model, path)
    feed = dict(zip(names[:2], values[:2]))
    artifact = compile_to(path, tmp_path / "nms.kiln", shapes={name: value.shape for name, value in feed.items()})
    got = list(kiln.load(artifact).run(feed).values())
    np.testing.assert_array_equal(got[0], expected[0])


def test_many_boxes_match_onnxruntime(tmp_path: Path):
    """2 batches x 3 classes x 300 boxes on a small grid of sizes and places (many equal scores and overlaps at
    the threshold), corners in either order, some of no area; at most 112 kept per class, scores above 0.2."""
    rng = np.random.default_rng(7)
    b = GraphBuilder("nms", opset=11)
    limits = [b.const(np.array([112], np.int64)), b.const(np.array([0.4], np.float32)),
              b.const(np.array([0.2], np.float32))]
    b.nodes.append(onnx.helper.make_node("NonMaxSuppression", [b.input("boxes", [2, 300, 4]),
                                                               b.input("scores", [2, 3, 300]), *limits],
                                         ["selected"]))
    b.output("selected", [672, 3], onnx.TensorProto.INT64)
    low = rng.integers(0, 8, (2, 300, 2)).astype(np.float32)
    high = low + rng.integers(0, 8, (2, 300, 2)).astype(np.float32)  # width or height 0 for some
    flip = rng.random((2, 300, 1)) < 0.3
    boxes = np.where(flip, np.concatenate([high, low], -1), np.concatenate([low, high], -1)).astype(np.float32)
    scores = (rng.integers(0, 10, (2, 3, 300)) / 10).astype(np.float32)
    path = b.save(tmp_path / "nms.onnx")
    feed = {"boxes": boxes, "scores": scores}
    got = kiln.load(compile_to(path, tmp_path / "nms.kiln", shapes={k: v.shape for k, v in feed.items()})).run(feed)
    expected = onnxruntime_outputs(path, feed)[0]
    kept = np.unique(expected[:, :2], axis=0, return_counts=True)[1]
    assert kept.max() == 112 and kept.min() < 112, kept  # the limit and suppression both at work
    np.testing.assert_array_equal(got["selected"], expected)


@pytest.mark.parametrize("mode", ["half_pixel", "output_half_pixel"])
def test_roi_align_matches_onnxruntime(mode: str, tmp_path: Path):
    rng = np.random.default_rng(5)
    b = GraphBuilder("roi", opset=16)
    b.output(b.node("RoiAlign", [b.input("x", [2, 24, 12, 10]), b.input("rois", [9, 4]),
                                 b.input("index", [9], onnx.TensorProto.INT64)], "pooled", mode="avg",
                    output_height=5, output_width=4, sampling_ratio=2, spatial_scale=0.5,
                    coordinate_transformation_mode=mode), [9, 24, 5, 4])
    corners = rng.uniform(-6, 26, (9, 2, 2)).astype(np.float32)  # some beyond the map's edges
    feed = {"x": rng.standard_normal((2, 24, 12, 10)).astype(np.float32),
            "rois": np.sort(corners, axis=1).reshape(9, 4), "index": rng.integers(0, 2, 9).astype(np.int64)}
    path = b.save(tmp_path / "roi.onnx")
    artifact = compile_to(path, tmp_path / "roi.kiln", shapes={k: v.shape for k, v in feed.items()})
    np.testing.assert_allclose(kiln.load(artifact).run(feed)["pooled"], onnxruntime_outputs(path, feed)[0],
                               rtol=1e-5, atol=1e-5)
    assert _kept_tables(path) == {"kpre_taps_y", "kpre_taps_x", "kpre_weights"}


def _kept_tables(path: Path) -> set[str]:
    """The PRECOMPUTED blocks left in the scheduled RoiAlign kernel of `path`."""
    import re

    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.backends.tvm.schedules.common import cpu_spec
    from kiln.compiler.backends.tvm.schedules.pipeline import fuse, schedule_module

    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    mod = fuse(from_onnx(onnx.load(path), keep_params_in_input=False), target)
    with target:
        mod = schedule_module(cpu_spec(target))(mod)
    text = "".join(f.script() for gv, f in mod.functions.items() if "roi_align" in gv.name_hint)
    return set(re.findall(r'sblock\("(kpre_\w+)"\)', text))


def test_nms_without_thresholds_keeps_onnx_defaults(tmp_path: Path):
    """No iou_threshold nor score_threshold: ONNX means 0 (suppress any overlap) and no threshold; TVM's importer
    took 0.5 and 0.0, dropping the boxes that score 0 or less (logits) and keeping overlapping ones, with no error."""
    b = GraphBuilder("nms", opset=11)
    b.nodes.append(onnx.helper.make_node("NonMaxSuppression", [b.input("boxes", [1, 4, 4]), b.input("scores", [1, 1, 4]),
                                                               b.const(np.array([4], np.int64))], ["selected"]))
    b.output("selected", [3, 3], onnx.TensorProto.INT64)
    path = b.save(tmp_path / "nms.onnx")
    feed = {"boxes": np.array([[[0, 0, 1, 1], [0, 0, 1, 1.05], [0, 5, 1, 6], [0, 9, 1, 10]]], np.float32),
            "scores": np.array([[[-0.5, -0.2, 0.3, -1.0]]], np.float32)}
    got = kiln.load(compile_to(path, tmp_path / "nms.kiln", shapes={k: v.shape for k, v in feed.items()})).run(feed)
    expected = onnxruntime_outputs(path, feed)[0]
    assert expected.tolist() == [[0, 0, 2], [0, 0, 1], [0, 0, 3]]  # box 0 suppressed by box 1, negatives kept
    np.testing.assert_array_equal(got["selected"], expected)
