"""A Resize with `axes` or a keep_aspect_ratio_policy, its input shape static and its scales / sizes / roi constant
(a tf_crop_and_resize roi may come at run time), compiles and computes as ONNX Runtime, where kiln refused it: TVM's
converter reads scales, sizes and roi for every dim and ignores both attributes. A policy whose scale gives sizes
that are not whole is computed by that scale, as ONNX maps coordinates (the converter maps them by the rounded
sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, compile_to

_SHAPE = (1, 2, 4, 6)


def _resize(path: Path, scales=None, sizes=None, roi=None, runtime_roi: bool = False, **attributes) -> Path:
    b = GraphBuilder("resize", opset=19)
    x = b.input("x", _SHAPE)
    roi_name = "" if roi is None else b.input("roi", [len(roi)]) if runtime_roi else b.const(np.array(roi, np.float32))
    inputs = [x, roi_name, "" if scales is None else b.const(np.array(scales, np.float32))]
    inputs += [] if sizes is None else [b.const(np.array(sizes, np.int64))]
    b.output(b.node("Resize", inputs, "y", name="resize_0", **attributes))
    return b.save(path, infer_shapes=True)


def _feed(roi=None, runtime_roi: bool = False) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal(_SHAPE).astype(np.float32)
    return {"x": x, **({"roi": np.array(roi, np.float32)} if runtime_roi else {})}


@pytest.mark.parametrize("inputs, attributes", [
    ({"scales": [2.0, 0.5]}, {"axes": [2, 3], "mode": "linear"}),
    ({"scales": [0.5, 2.0]}, {"axes": [3, 2], "mode": "nearest"}),
    ({"sizes": [9, 2]}, {"axes": [3, 2], "mode": "linear"}),
    ({"sizes": [8, 3]}, {"axes": [-2, -1], "mode": "cubic", "coordinate_transformation_mode": "align_corners"}),
    ({"sizes": [3, 3], "roi": [0.2, 0.4, 0.8, 0.6]},
     {"axes": [3, 2], "mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}),
    ({"sizes": [3, 5], "roi": [0.2, 0.1, 0.9, 0.7], "runtime_roi": True},
     {"axes": [2, 3], "mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
      "extrapolation_value": 2.0}),
    ({"sizes": [16, 9]}, {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger", "mode": "linear"}),
    ({"sizes": [2, 2]}, {"axes": [3, 2], "keep_aspect_ratio_policy": "not_smaller", "mode": "nearest"}),
    ({"sizes": [1, 2, 8, 8]}, {"keep_aspect_ratio_policy": "not_larger", "mode": "nearest"}),
], ids=["scales-2-3", "scales-3-2", "sizes-3-2", "sizes-negative-axes", "crop-3-2", "crop-runtime-roi",
        "not-larger", "not-smaller", "not-larger-no-axes"])
def test_resize_matches_onnx_runtime(inputs, attributes, tmp_path: Path):
    """not_larger [16, 9] of [4, 6]: scale 1.5, sizes [6, 9]; not_smaller [2, 2] of [6, 4] (axes 3, 2): scale 0.5,
    sizes [2, 3]; without axes not_larger takes the batch and channel ratios too (scale 1: the input's own sizes)."""
    feed = _feed(inputs.get("roi"), inputs.get("runtime_roi", False))
    check_correctness(_resize(tmp_path / "resize.onnx", **inputs, **attributes), feed, tmp_path)


def test_policy_whose_scale_gives_sizes_not_whole_is_computed_by_the_scale(tmp_path: Path):
    """not_smaller [3, 3] of [4, 6]: scale 0.75, and 0.75 * 6 = 4.5 is rounded to 5, coordinates mapped by 0.75
    (kiln.compiler.passes.resize_exact), as ONNX's reference computes it."""
    from onnx.reference import ReferenceEvaluator

    model = _resize(tmp_path / "resize.onnx", sizes=[3, 3], axes=[2, 3], keep_aspect_ratio_policy="not_smaller",
                    mode="linear")
    feed = _feed()
    artifact = compile_to(model, tmp_path / "resize.kiln", "host", shapes={"x": _SHAPE}, verify=False)
    got = kiln.load(artifact).run(feed)["y"]
    expected, = ReferenceEvaluator(str(model)).run(None, feed)
    assert got.shape == expected.shape == (1, 2, 3, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)