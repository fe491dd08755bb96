"""Each converted MXNet op matches what real MXNet computes: one small symbol per op and attribute case
(tests/mxnet/export_ops.py), run by ONNX Runtime after conversion; the detection ops compiled by kiln too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mxnet


def _check_case(folder: Path) -> str | None:
    from kiln.compiler.frontends import ImportOptions, load_graph
    from kiln.testing.reference import onnxruntime_outputs

    reference = dict(np.load(folder / "reference.npz"))
    feeds = {name: array for name, array in reference.items() if not name.startswith("output")}
    graph = load_graph(folder / "model-symbol.json",
                       ImportOptions({n: a.shape for n, a in feeds.items()}, params=folder / "model-0000.params"))
    for index, actual in enumerate(onnxruntime_outputs(graph.body, feeds)):
        expected = reference[f"output{index}"]
        if actual.dtype != expected.dtype:
            return f"output {index}: {actual.dtype}, not MXNet's {expected.dtype}"
        if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=1e-4, atol=1e-5):
            return f"output {index}: max |diff| {np.abs(actual - expected).max()} (shape {actual.shape})"
    return None


def test_every_op_case_matches_mxnet(op_exports: Path):
    cases = sorted(p for p in op_exports.iterdir() if p.is_dir())
    assert len(cases) > 60
    failures = {case.name: problem for case in cases if (problem := _check_case(case))}
    assert not failures, failures


@pytest.mark.parametrize("case", ["box_decode", "roi_align_aligned", "box_nms_classes", "box_nms_at_threshold"])
def test_detection_ops_compile_and_match_mxnet(case: str, op_exports: Path, tmp_path: Path):
    """Detection post-processing compiles into the artifact (TVM's RoiAlign and NonMaxSuppression included)."""
    import kiln
    from kiln.compiler.frontends import ImportOptions
    from kiln.testing.reference import compile_to

    folder = op_exports / case
    reference = dict(np.load(folder / "reference.npz"))
    feeds = {name: array for name, array in reference.items() if not name.startswith("output")}
    imports = ImportOptions({n: a.shape for n, a in feeds.items()}, params=folder / "model-0000.params")
    artifact = compile_to(folder / "model-symbol.json", tmp_path / f"{case}.kiln", imports=imports)
    for index, actual in enumerate(kiln.load(artifact).run(feeds).values()):
        np.testing.assert_allclose(actual, reference[f"output{index}"], rtol=1e-4, atol=1e-5, err_msg=f"output {index}")


def test_attribute_values_kiln_cannot_express_are_refused():
    """Listed as unsupported (exit 4), never converted to something else."""
    from kiln.compiler.frontends.mxnet.convert import convert
    from kiln.compiler.frontends.mxnet.symbol import parse_symbol
    from kiln.errors import UnsupportedOpError

    refused = {
        "topk(ret_typ=sorted)": ("topk", {"ret_typ": "sorted"}),
        "Cast(dtype=bfloat16)": ("Cast", {"dtype": "bfloat16"}),
        "_arange(infer_range=True)": ("_arange", {"start": "0", "stop": "4", "infer_range": "True"}),
        "reverse(axis=-1 on rank 4 (MXNet's reverse takes axes 0 to 3))": ("reverse", {"axis": "-1"}),
        "_contrib_BilinearResize2D(mode=size without both scale_height and scale_width)":
            ("_contrib_BilinearResize2D", {"scale_height": "2"}),
        "_contrib_ROIAlign(position_sensitive=True)":
            ("_contrib_ROIAlign", {"pooled_size": "(2, 2)", "spatial_scale": "1", "position_sensitive": "True"}),
        "_contrib_box_nms(overlap_thresh=-0.1)": ("_contrib_box_nms", {"overlap_thresh": "-0.1"}),
    }
    nodes = [{"op": "null", "name": "x", "inputs": []}]
    nodes += [{"op": op, "name": f"node{i}", "attrs": attrs, "inputs": [[0, 0, 0]]}
              for i, (op, attrs) in enumerate(refused.values())]
    symbol = parse_symbol({"nodes": nodes, "heads": [[i, 0, 0] for i in range(1, len(nodes))]}, Path("refused"))
    with pytest.raises(UnsupportedOpError) as raised:
        convert(symbol, {}, {"x": (1, 2, 4, 4)})
    assert raised.value.unsupported == {key: [f"node{i}"] for i, key in enumerate(refused)}
