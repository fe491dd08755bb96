"""The mutation fuzzer over every reader (kiln.testing.fuzz): no mutant ends in a traceback, a crash, a runaway or a
hang. And, one small test each, the bugs it found, fixed."""

from __future__ import annotations

import copy
import ctypes
import io
import json
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from kiln.arrays import read_arrays
from kiln.calibration.datasets import CalibData, Sampling, open_dataset
from kiln.calibration.images import Channels, ImageSpec, load_image
from kiln.compiler.frontends import onnx as onnx_frontend
from kiln.compiler.frontends import trees
from kiln.compiler.graph import TensorSpec
from kiln.compiler.manifest import Manifest
from kiln.errors import InputError
from kiln.isolation import Limits, run_isolated
from kiln.testing.fuzz import READERS
from kiln.testing.paths import DIGITS_CNN, TREE_MODELS

CASES_PER_READER = 200  # about 65 s on 2 cores for all 14 readers; benchmarks/fuzz.py runs thousands


@pytest.mark.slow
def test_no_mutant_of_any_reader_ends_in_a_traceback_a_crash_or_a_hang(tmp_path):
    # Two driver processes, half the readers each: the cases are forked, so never from this (TVM-running) process.
    names = sorted(READERS)
    drivers = [subprocess.Popen([sys.executable, "-m", "kiln.testing.fuzz", "--cases", str(CASES_PER_READER),
                                 "--seed", "0", "--json", "--save", str(tmp_path),
                                 *(arg for name in half for arg in ("--reader", name))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for half in (names[0::2], names[1::2])]
    reports = []
    for driver in drivers:
        out, err = driver.communicate(timeout=900)
        assert driver.returncode in (0, 1), err[-3000:]
        reports += json.loads(out)
    for report in reports:
        print(f"{report['reader']}: {report['cases']} cases, {report['outcomes']}")
    assert sorted(report["reader"] for report in reports) == names
    failures = [failure for report in reports for failure in report["failures"]]
    assert not failures, json.dumps(failures, indent=1)


def test_a_calibration_csv_that_is_not_text_is_an_input_error(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"1,2\n\xff,3\n")
    with pytest.raises(InputError, match="not a numeric CSV"):
        open_dataset(CalibData(path), (TensorSpec("input", ("batch", 2), "float32"),))


def test_an_array_claiming_more_data_than_its_file_holds_is_refused_before_allocating(tmp_path):
    # the header of a 512-byte array claims 2 * 10^9 samples: 512 GB numpy would allocate before reading
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2 * 10**9, 1, 8, 8)})
    member.write(bytes(512))
    path = tmp_path / "calib.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input.npy", member.getvalue())
    with pytest.raises(InputError, match=r"array 'input' claims shape \(2000000000, 1, 8, 8\)"):
        read_arrays(path)
    single = tmp_path / "input.npy"
    single.write_bytes(member.getvalue())
    with pytest.raises(InputError, match="claims shape"):
        read_arrays(single, "input")


def test_an_onnx_name_that_is_not_utf8_is_an_input_error(tmp_path):
    model = onnx.load(DIGITS_CNN)
    model.graph.node[0].name = "QQQQ"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString().replace(b"QQQQ", b"\xff\xfe\xfd\xfc"))
    with pytest.raises(InputError, match="NodeProto.name is not valid UTF-8"):
        onnx_frontend.load(path)


def test_an_external_data_location_with_a_nul_byte_is_an_input_error(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(onnx.load(DIGITS_CNN), path, save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "model.onnx.data\0x"
    onnx.save_model(model, path)
    with pytest.raises(InputError, match="NUL byte"):
        onnx_frontend.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda model: setattr(model.graph.initializer[0], "data_type", 40), "tensor '.*' has data type 40"),
    (lambda model: setattr(model.graph.input[0].type.tensor_type, "elem_type", 99), "'input' has data type 99"),
])
def test_a_data_type_that_onnx_does_not_have_is_an_input_error(tmp_path, edit, message):
    model = onnx.load(DIGITS_CNN)
    edit(model)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path)
    with pytest.raises(InputError, match=message):
        onnx_frontend.load(path)


def test_an_image_spec_that_is_not_text_is_an_input_error(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_bytes(b'channels = "\xff"\n')
    with pytest.raises(InputError, match="image spec"):
        ImageSpec.from_toml(spec)


def test_images_claiming_billions_of_pixels_or_of_another_size_are_input_errors(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in (("a.png", (8, 8)), ("b.png", (8, 9))):
        Image.new("L", size).save(folder / name)
    data = CalibData(folder, Sampling(images=ImageSpec(channels=Channels.L)))
    dataset = open_dataset(data, (TensorSpec("input", ("batch", 1, 8, 8), "float32"),))
    with pytest.raises(InputError, match=r"b.png, input 'input': shape 1x1x9x8, the model takes Nx1x8x8"):
        list(dataset.batches(2))
    png = (folder / "b.png").read_bytes()  # IHDR's width made 2^31 - 1, its CRC made right
    header = png[12:16] + (2**31 - 1).to_bytes(4, "big") + png[20:29]
    (folder / "b.png").write_bytes(png[:16] + header[4:] + zlib.crc32(header).to_bytes(4, "big") + png[33:])
    with pytest.raises(InputError, match="could be decompression bomb"):
        list(dataset.batches(2))


def test_an_estimator_that_treelite_cannot_read_is_an_input_error(tmp_path):
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(n_estimators=2).fit(np.eye(4), np.arange(4.0))
    model.init_.constant_ = np.array([[1.0, 2.0], [3.0]], dtype=object)  # as a corrupt skops file can hold it
    with pytest.raises(InputError, match="treelite cannot import this GradientBoostingRegressor"):
        trees._from_native(tmp_path / "model.skops", model)


@pytest.fixture(scope="module")
def tree_manifest(tmp_path_factory) -> dict:
    import kiln

    output = tmp_path_factory.mktemp("fuzz") / "model.kiln"
    return kiln.compile(TREE_MODELS / "xgb_binary_nan.json",
                        kiln.CompileOptions(kiln.target("x86-64"), output)).manifest.to_json()


@pytest.mark.parametrize("edit", [
    lambda data: data["inputs"][0].update(shape=["batch", -1]),
    lambda data: data["inputs"][0].update(shape=["batch", 0.5]),
    lambda data: data["inputs"][0].update(shape=["batch", 2**31, 4]),
    lambda data: data["outputs"][0].update(shape=["batch"]),
    lambda data: data["inputs"][0].update(dtype="float3"),
    lambda data: data.update(outputs=[]),
    lambda data: data["library"].update(sha256=7),
    lambda data: data["target"].update(requires=["avx2", 7]),
])
def test_a_manifest_no_predictor_can_take_is_an_input_error(tree_manifest, edit):
    data = copy.deepcopy(tree_manifest)
    edit(data)
    with pytest.raises(InputError, match="incomplete or malformed"):
        Manifest.from_json(data)


def test_a_worker_that_dies_is_told_apart_from_a_refusal():
    with pytest.raises(InputError) as died:
        run_isolated(lambda: ctypes.string_at(0), Limits(None, None), "reading model.txt")  # SIGSEGV
    with pytest.raises(InputError) as refused:
        run_isolated(lambda: open_dataset(CalibData(Path("missing.npz")), ()), Limits(None, None), "reading")
    assert died.value.worker_failed == "SIGSEGV" and not hasattr(refused.value, "worker_failed")


def test_an_npy_header_with_a_negative_dim_or_unbalanced_brackets_is_an_input_error(tmp_path):
    path = tmp_path / "calib.npz"
    for header, message in ((b"{'descr': '<f4', 'fortran_order': False, 'shape': (2000000000, 1, 8, -2147483648), }",
                             "claims shape"),
                            (b"{'descr': '<f4', 'fortran_order': False, 'shape': ((2, 1, 8, 8), }",
                             "EOF in multi-line statement")):
        header += b" " * (127 - 10 - len(header)) + b"\n"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("input.npy",
                             b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(512))
        with pytest.raises(InputError, match=message):
            read_arrays(path)


def test_a_png_that_pil_cannot_parse_is_an_input_error(tmp_path):
    from PIL import Image

    path = tmp_path / "image.png"
    Image.new("L", (8, 8)).save(path)
    png = path.read_bytes()
    path.write_bytes(png[:8] + (7).to_bytes(4, "big") + b"IHDR" + png[16:23] + zlib.crc32(b"IHDR" + png[16:23])
                     .to_bytes(4, "big") + png[33:])  # an IHDR chunk of 7 bytes where PNG has 13
    with pytest.raises(InputError, match="cannot decode image"):
        load_image(path, ImageSpec(channels=Channels.L))


@pytest.mark.parametrize("text, message", [
    ('[artifact]\noutput_dir = "build"\n', "artifact.output_dir = 'build': not a table"),
    ("artifact = 1\n", "artifact = 1: not a table"),
    ('defaults = 3\n[artifact.a]\nmodel = "m.onnx"\n', r"defaults = 3; give them as a \[defaults\] table"),
])
def test_a_kiln_toml_whose_artifacts_or_defaults_are_not_tables_is_an_input_error(tmp_path, text, message):
    from kiln.project.config import read_config

    (tmp_path / "kiln.toml").write_text(text)
    with pytest.raises(InputError, match=message):
        read_config(tmp_path / "kiln.toml")


def _lightgbm(tmp_path, edit) -> Path:
    path = tmp_path / "model.txt"
    path.write_bytes(edit((TREE_MODELS / "lgb_regression_cat.txt").read_bytes()))
    return path


@pytest.mark.parametrize("edit, message", [
    # treelite gives the lines after "end of trees" to the last tree: a feature called num_leaves resized it (SIGSEGV)
    (lambda data: data.replace(b"\nColumn_8=", b"\nnum_leaves="), "tree 5: leaf_value holds 8 values where num_leaves"),
    # kiln counted 7 values at the spaces but parsed 6: a traceback
    (lambda data: data.replace(b"split_feature=", b"split_feature=1  ", 1), "not separated by single spaces"),
])
def test_lightgbm_text_read_as_treelite_reads_it(tmp_path, edit, message):
    from kiln.compiler.frontends.source_format import SourceFormat
    from kiln.compiler.frontends.trees.validate import check_file

    path = _lightgbm(tmp_path, edit)
    with pytest.raises(InputError, match=message):
        check_file(path, SourceFormat.LIGHTGBM, path.read_bytes())


def test_lightgbm_bytes_that_are_not_utf8_are_an_input_error(tmp_path):
    from kiln.compiler.frontends.source_format import SourceFormat

    path = _lightgbm(tmp_path, lambda data: data.replace(b"objective=regression", b"objective=regr\x80ession"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        trees.load(path, SourceFormat.LIGHTGBM, False)


def test_a_zip_of_a_version_zipfile_cannot_read_is_no_skops_file(tmp_path):
    from kiln.compiler.frontends.trees.formats import detect_tree_format

    data = bytearray((TREE_MODELS / "sk_gb_regression.skops").read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 6] = 255  # "version needed to extract" 25.5
    (tmp_path / "model.skops").write_bytes(bytes(data))
    assert detect_tree_format(tmp_path / "model.skops") is None
