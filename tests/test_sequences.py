"""ONNX sequences, optionals and Loops carried out at compile time (issue #19, kiln.compiler.frontends.sequences):
pinned with --sequence-shape, compiled, run with lists of arrays and checked against ONNX Runtime on the model as
written; what depends on run-time values is refused with exit 4 naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.cli import cli
from kiln.compiler.frontends.options import ImportOptions, sequence_shape
from kiln.errors import InputError, UnsupportedOpError

RNG = np.random.default_rng(0)
ELEMENTS = [RNG.standard_normal((2, 3)).astype(np.float32) for _ in range(3)]
X = RNG.standard_normal((2, 3)).astype(np.float32)


def _sequence(name: str, rank: int = 2):
    return helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, [None] * rank)


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.array(value), name))


def _save(path: Path, nodes, inputs, outputs, opset: int = 18) -> Path:
    model = helper.make_model(helper.make_graph(nodes, "sequences", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _mapped_and_stacked(path: Path) -> Path:
    """seq (3 x [2,3]) and x: SequenceMap(seq + x), one more element inserted at the front, an element read back,
    the length, and the elements stacked on a new axis."""
    body = helper.make_graph([helper.make_node("Add", ["e", "t"], ["s"])], "add",
                             [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3]),
                              helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])],
                             [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3])])
    nodes = [helper.make_node("SequenceMap", ["seq", "x"], ["mapped"], body=body),
             _const("front", np.int64(0)),
             helper.make_node("SequenceInsert", ["mapped", "x", "front"], ["inserted"]),
             _const("last", np.int64(-1)),
             helper.make_node("SequenceAt", ["inserted", "last"], ["at"]),
             helper.make_node("SequenceLength", ["inserted"], ["length"]),
             helper.make_node("ConcatFromSequence", ["inserted"], ["stacked"], axis=0, new_axis=1)]
    return _save(path, nodes, [_sequence("seq"), helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                 [_sequence("inserted"), helper.make_tensor_value_info("at", TensorProto.FLOAT, [2, 3]),
                  helper.make_tensor_value_info("length", TensorProto.INT64, []),
                  helper.make_tensor_value_info("stacked", TensorProto.FLOAT, [4, 2, 3])])


def _onnxruntime(path: Path, feed: dict) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _compile(model: Path, output: Path, **imports) -> "kiln.CompileResult":
    return kiln.compile(model, kiln.CompileOptions(kiln.target("host"), output, kiln.ImportOptions(**imports)))


def test_sequence_ops_match_onnxruntime(tmp_path: Path):
    model = _mapped_and_stacked(tmp_path / "m.onnx")
    result = _compile(model, tmp_path / "o.kiln", sequence_shapes={"seq": ((2, 3),) * 3})
    assert [spec.name for spec in result.manifest.inputs] == ["seq.0", "seq.1", "seq.2", "x"]
    assert result.manifest.verification is not None and result.manifest.verification.passed
    got = kiln.load(tmp_path / "o.kiln").run({"seq": ELEMENTS, "x": X})
    inserted, at, length, stacked = _onnxruntime(model, {"seq": ELEMENTS, "x": X})
    assert list(got) == ["inserted", "at", "length", "stacked"]
    assert len(got["inserted"]) == len(inserted) == 4
    for mine, theirs in zip(got["inserted"], inserted):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    np.testing.assert_allclose(got["at"], at, rtol=1e-6)
    assert int(got["length"]) == int(length) == 4
    np.testing.assert_allclose(got["stacked"], stacked, rtol=1e-6)


def test_loop_of_a_constant_trip_count_is_unrolled(tmp_path: Path):
    """A Loop (trip count and condition constant) with a carried sum, a scan output and a sequence it fills, as
    ONNX's expanded SequenceMap writes one."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["i_float"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "i_float"], ["scaled"]),
         helper.make_node("Add", ["sum_in", "scaled"], ["sum_out"]),
         helper.make_node("SequenceInsert", ["seq_in", "scaled"], ["seq_out"]),
         helper.make_node("Identity", ["sum_out"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("sum_in", TensorProto.FLOAT, [2, 3]), _sequence("seq_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("sum_out", TensorProto.FLOAT, [2, 3]), _sequence("seq_out"),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [2, 3])])
    nodes = [_const("trips", np.int64(4)), _const("go", np.bool_(True)),
             helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
             helper.make_node("Loop", ["trips", "go", "x", "empty"], ["total", "filled", "scans"], body=body)]
    model = _save(tmp_path / "loop.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                  [helper.make_tensor_value_info("total", TensorProto.FLOAT, [2, 3]), _sequence("filled"),
                   helper.make_tensor_value_info("scans", TensorProto.FLOAT, [4, 2, 3])])
    _compile(model, tmp_path / "o.kiln")
    got = kiln.load(tmp_path / "o.kiln").run({"x": X})
    total, filled, scans = _onnxruntime(model, {"x": X})
    np.testing.assert_allclose(got["total"], total, rtol=1e-6)
    assert len(got["filled"]) == len(filled) == 4
    for mine, theirs in zip(got["filled"], filled):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    np.testing.assert_allclose(got["scans"], scans, rtol=1e-6)


def test_given_optional_input_is_its_value(tmp_path: Path):
    nodes = [helper.make_node("OptionalHasElement", ["maybe"], ["has"]),
             helper.make_node("OptionalGetElement", ["maybe"], ["value"])]
    optional = helper.make_value_info("maybe", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 3])))
    model = _save(tmp_path / "opt.onnx", nodes, [optional],
                  [helper.make_tensor_value_info("has", TensorProto.BOOL, []),
                   helper.make_tensor_value_info("value", TensorProto.FLOAT, [2, 3])])
    _compile(model, tmp_path / "o.kiln", input_shapes={"maybe": (2, 3)})
    got = kiln.load(tmp_path / "o.kiln").run({"maybe": X})
    assert bool(got["has"]) is True
    np.testing.assert_array_equal(got["value"], X)


def test_run_time_position_is_refused_naming_the_input_to_freeze(tmp_path: Path):
    nodes = [helper.make_node("SequenceAt", ["seq", "where"], ["at"], name="pick")]
    model = _save(tmp_path / "at.onnx", nodes,
                  [_sequence("seq"), helper.make_tensor_value_info("where", TensorProto.INT64, [])],
                  [helper.make_tensor_value_info("at", TensorProto.FLOAT, [None, 3])])
    with pytest.raises(UnsupportedOpError, match=r"SequenceAt \(position computed at run time\) ×1 \(nodes pick\)") \
            as refused:
        _compile(model, tmp_path / "o.kiln", sequence_shapes={"seq": ((2, 3), (2, 3))})
    assert refused.value.freezable == ("where",)
    assert not (tmp_path / "o.kiln").exists()
    _compile(model, tmp_path / "o.kiln", sequence_shapes={"seq": ((2, 3), (4, 3))}, frozen_inputs={"where": (1,)})
    elements = [X, np.concatenate([X, X])]
    np.testing.assert_array_equal(kiln.load(tmp_path / "o.kiln").run({"seq": elements})["at"], elements[1])


def test_unpinned_sequence_is_refused_naming_the_flag(cli_runner, tmp_path: Path):
    model = _mapped_and_stacked(tmp_path / "m.onnx")
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "o.kiln")])
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "--sequence-shape" in result.stderr
    assert not (tmp_path / "o.kiln").exists()


def test_cli_pins_a_sequence_and_records_it(cli_runner, tmp_path: Path):
    model = _mapped_and_stacked(tmp_path / "m.onnx")
    output = tmp_path / "o.kiln"
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(output), "--sequence-shape", "seq:2x3,2x3,2x3"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["sequence_inputs"] == [{"name": "seq", "elements": ["seq.0", "seq.1", "seq.2"]}]
    assert manifest["sequence_outputs"] == [{"name": "inserted", "elements": [f"inserted.{i}" for i in range(4)]}]
    with pytest.raises(InputError, match=r"'seq' is a sequence of 3 arrays .*got a list of 2 arrays"):
        kiln.load(output).run({"seq": ELEMENTS[:2], "x": X})


def test_sequence_shape_flag_and_table_parse_element_shapes():
    assert sequence_shape("seq:2x3,4x3") == ("seq", ((2, 3), (4, 3)))
    assert sequence_shape("seq:") == ("seq", ())
    from kiln.settings import from_raw

    read = from_raw(ImportOptions, {"sequence_shapes": {"seq": "2x3,4x3", "more": ["1x2", "1x2"]}})
    assert read.sequence_shapes == {"seq": ((2, 3), (4, 3)), "more": ((1, 2), (1, 2))}
    with pytest.raises(ValueError, match="not NAME:DIMS,DIMS"):
        sequence_shape("seq:2x3,1-4x3")
