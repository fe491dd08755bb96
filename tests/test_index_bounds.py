"""Integer inputs that index constant tables (token ids into embeddings) are range-checked when an artifact runs,
as ONNX Runtime checks them, instead of the compiled code reading past the table (#21 item 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.errors import InputError
from kiln.pipeline import CompileOptions
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import onnxruntime_outputs

INT32, INT64 = 6, 7


@pytest.fixture(scope="module")
def embedding(tmp_path_factory) -> tuple[Path, Path]:
    """ids (int32, cast to int64) index a 50-row and a 40-row table; positions (int64) a 16-row one."""
    folder = tmp_path_factory.mktemp("embedding")
    rng = np.random.default_rng(0)
    b = GraphBuilder("embedding", opset=13)
    b.input("ids", [2, 16], dtype=INT32)
    b.input("positions", [2, 16], dtype=INT64)
    ids = b.node("Cast", ["ids"], to=INT64)
    words = b.node("Gather", [b.const(rng.standard_normal((50, 8)).astype(np.float32)), ids])
    types = b.node("Gather", [b.const(rng.standard_normal((40, 8)).astype(np.float32)), ids])
    places = b.node("Gather", [b.const(rng.standard_normal((16, 8)).astype(np.float32)), "positions"])
    b.node("Add", [b.node("Add", [words, types]), places], "y")
    b.output("y", [2, 16, 8])
    model = b.save(folder / "embedding.onnx", check=True)
    return model, kiln.compile(model, CompileOptions(kiln.target("x86-64"), folder / "embedding.kiln")).path


def _feed(ids, positions=None) -> dict[str, np.ndarray]:
    return {"ids": np.full((2, 16), ids, np.int32) if np.isscalar(ids) else ids,
            "positions": np.zeros((2, 16), np.int64) if positions is None else positions}


def test_the_manifest_records_the_fewest_rows_each_input_indexes(embedding):
    bounds = {spec.name: spec.index_bound for spec in kiln.inspect(embedding[1]).inputs}
    assert bounds == {"ids": 40, "positions": 16}


@pytest.mark.parametrize("ids", [39, -40, 0])
def test_indices_in_range_negative_ones_included_match_onnx_runtime(embedding, ids):
    model, artifact = embedding
    feed = _feed(ids, np.arange(32).reshape(2, 16) % 16)
    np.testing.assert_allclose(kiln.load(artifact).predict(feed), onnxruntime_outputs(model, feed)[0], rtol=1e-6)


@pytest.mark.parametrize("ids, positions, message", [
    (40, None, "input 'ids' holds 40, outside the 40 rows of the table it indexes (valid: -40 to 39)"),
    (-41, None, "input 'ids' holds -41"),
    (0, np.full((2, 16), 16), "input 'positions' holds 16, outside the 16 rows"),
])
def test_out_of_range_indices_are_refused_before_the_run(embedding, ids, positions, message):
    with pytest.raises(InputError, match=re.escape(message)):
        kiln.load(embedding[1]).run(_feed(ids, positions))


def test_the_cli_refuses_them_with_exit_3(embedding, cli_runner, tmp_path):
    np.savez(tmp_path / "in.npz", **_feed(10**6))
    result = cli_runner.invoke(cli, ["run", str(embedding[1]), "-i", str(tmp_path / "in.npz")])
    assert result.exit_code == 3 and "holds 1000000" in result.output
    inspected = json.loads(cli_runner.invoke(cli, ["inspect", str(embedding[1]), "--json"]).stdout)
    assert inspected["inputs"][0]["index_bound"] == 40


def test_inputs_onnx_runtime_refuses_are_a_clean_error_in_bench(tmp_path):
    """An artifact built before index bounds were recorded gets integers 0-9 from `kiln bench`; where ONNX Runtime
    refuses them (a table of 2 rows) the reference's error is exit 3, not a traceback."""
    from kiln.bench import onnxruntime_runner

    b = GraphBuilder("types", opset=13)
    b.input("ids", [1, 4], dtype=INT64)
    b.node("Gather", [b.const(np.ones((2, 3), np.float32)), "ids"], "y")
    b.output("y", [1, 4, 3])
    model = b.save(tmp_path / "types.onnx", check=True)
    run = onnxruntime_runner(model, threads=1)
    assert run({"ids": np.ones((1, 4), np.int64)})[0].shape == (1, 4, 3)
    with pytest.raises(InputError, match=r"ONNX Runtime refused the inputs \(.*out of data bounds"):
        run({"ids": np.full((1, 4), 7, np.int64)})
