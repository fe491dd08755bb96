"""kiln.compat against the installed dependencies: every piece that relies on another project's internals
still works, and every version range agrees with setup.cfg. An upgrade of TVM, tl2cgen or onnx that
breaks one of them fails here, by name."""

from __future__ import annotations

import configparser
import ctypes
import importlib
import inspect
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.compat import IncompatibleVersionError, VersionRange, installed_version, release_numbers
from kiln.compat import onnx as onnx_compat
from kiln.compat import tl2cgen as tl2cgen_compat
from kiln.compat import tvm as tvm_compat
from kiln.errors import KilnError

RANGES = [tvm_compat.TVM, tvm_compat.TVM_FFI, tl2cgen_compat.TL2CGEN, onnx_compat.ONNX]


def _pins() -> dict[str, list[tuple[str, str]]]:
    """setup.cfg's install_requires: package -> [(operator, version), ...]."""
    setup_cfg = next(p / "setup.cfg" for p in Path(__file__).resolve().parents if (p / "setup.cfg").is_file())
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    pins = {}
    for line in parser["options"]["install_requires"].splitlines():
        requirement = line.split("#", 1)[0].replace(" ", "")
        if requirement:
            name, specifiers = re.fullmatch(r"([\w.-]+)(.*)", requirement).groups()
            pins[name] = [re.fullmatch(r"(==|>=|<=|<|>|!=|~=)(.+)", spec).groups() for spec in specifiers.split(",")]
    return pins


# ---- version ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("versions", RANGES, ids=lambda r: r.package)
def test_installed_version_is_in_range(versions: VersionRange):
    assert installed_version(versions.package) in versions
    versions.check()


@pytest.mark.parametrize("versions", RANGES, ids=lambda r: r.package)
def test_setup_cfg_pins_stay_inside_the_range(versions: VersionRange):
    """Raising a pin in setup.cfg means checking the compat code against the new version, then its range."""
    pins = _pins()[versions.package]
    for operator, version in pins:
        if operator in ("==", ">="):
            assert version in versions, f"setup.cfg allows {versions.package}{operator}{version}: {versions.specifier}"
        elif operator == "<":
            assert release_numbers(version) <= release_numbers(versions.below), (versions.specifier, pins)
        else:
            pytest.fail(f"setup.cfg pins {versions.package} with {operator}; pin it with ==, or >= and <")
    assert any(op in ("==", "<") for op, _ in pins), f"setup.cfg leaves {versions.package} without an upper bound"


def test_a_version_outside_the_range_is_refused_by_name():
    installed = installed_version("onnx")
    with pytest.raises(IncompatibleVersionError, match=f"onnx {installed} is installed") as caught:
        VersionRange("onnx", "0.1", "0.2", "a test").check()
    assert isinstance(caught.value, KilnError)
    assert "pip install 'onnx>=0.1,<0.2'" in str(caught.value)
    with pytest.raises(IncompatibleVersionError, match="kiln-no-such-package is not installed"):
        VersionRange("kiln-no-such-package", "1.0", "2.0", "a test").check()


def test_release_numbers_compare_like_versions():
    assert "0.27.0.post1" in VersionRange("apache-tvm", "0.27", "0.28", "")
    assert "0.28.0" not in VersionRange("apache-tvm", "0.27", "0.28", "")
    assert "1.23.2" in VersionRange("onnx", "1.17", "1.24", "")
    assert "1.24.0rc1" not in VersionRange("onnx", "1.17", "1.24", "")
    assert "1.16.9" not in VersionRange("onnx", "1.17", "1.24", "")


# ---- TVM: the module blob ---------------------------------------------------------------------------

_KERNEL = '''
from tvm.script import tirx as T


@T.prim_func(s_tir=True)
def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
    T.func_attr({"global_symbol": "add_one"})
    for i in T.thread_binding(64, thread="threadIdx.x"):
        with T.sblock("b"):
            vi = T.axis.spatial(64, i)
            b[vi] = a[vi] + T.float32(1)
'''


@pytest.fixture(scope="module")
def cuda_module(tmp_path_factory):
    """A host module importing one CUDA module (source: this TVM wheel does not run nvcc)."""
    import tvm

    folder = tmp_path_factory.mktemp("kernel")
    (folder / "kiln_compat_kernel.py").write_text(_KERNEL)  # TVMScript parses the source of a file
    sys.path.insert(0, str(folder))
    try:
        kernel = importlib.import_module("kiln_compat_kernel")
    finally:
        sys.path.remove(str(folder))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}})
    return tvm.compile(tvm.IRModule({"add_one": kernel.add_one}), target=target).mod


def test_module_blob_round_trips(cuda_module):
    import tvm

    raw = tvm.get_global_func("runtime.ModulePackImportsToTensor")(cuda_module).numpy().tobytes()
    blob = tvm_compat.packed_imports(cuda_module)
    assert [kind for kind, _ in blob.modules] == ["_lib", "cuda"]
    assert blob.to_bytes() == raw
    code = tvm_compat.DeviceCode.parse(blob.modules[1][1])
    assert (code.fmt, code.kernel_names) == ("cuda", ["add_one_kernel"])
    assert "add_one_kernel" in code.code.decode()
    assert code.to_bytes() == blob.modules[1][1]


def test_exported_library_embeds_the_rewritten_blob(cuda_module, tmp_path: Path):
    """export_library's fpack_imports hook, the blob symbol and its layout, as TVM's loader finds them."""
    seen = []

    def rewrite(blob: tvm_compat.LibraryBin) -> None:
        code = tvm_compat.DeviceCode.parse(blob.modules[1][1])
        blob.modules[1] = ("cuda", tvm_compat.DeviceCode("ptx", code.function_table, b"kiln").to_bytes())
        seen.append(blob.to_bytes())

    library = tmp_path / "add_one.so"
    tvm_compat.export_library(cuda_module, library, rewrite_imports=rewrite)
    handle = ctypes.CDLL(str(library))
    address = ctypes.addressof(ctypes.c_char.in_dll(handle, tvm_compat.LIBRARY_BIN_SYMBOL))
    (size,) = struct.unpack("<Q", ctypes.string_at(address, 8))
    assert [ctypes.string_at(address, 8 + size)] == seen
    embedded = tvm_compat.LibraryBin.parse(seen[0])
    assert tvm_compat.DeviceCode.parse(embedded.modules[1][1]).code == b"kiln"


# ---- TVM: the ONNX importer's converter table and MetaSchedule's tensor intrinsics -------------------

def test_onnx_importer_converter_table_has_the_ops_kiln_relies_on():
    from tvm.relax.frontend.onnx import onnx_frontend

    assert callable(onnx_frontend._get_convert_map)
    ops = tvm_compat.onnx_importer_ops()
    assert {"Conv", "ConvTranspose", "Gemm", "MatMul", "QuantizeLinear", "DequantizeLinear", "BatchNormalization",
            "Relu", "Clip", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Softmax",
            "Reshape", "Flatten", "Constant", "If"} <= ops


def test_tune_context_needs_only_the_import_of_tensor_intrinsics():
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    assert f"import {tvm_compat.TENSOR_INTRIN_MODULE}" in inspect.getsource(ms.TuneContext.__init__)
    already = tvm_compat.TENSOR_INTRIN_MODULE in sys.modules
    a = te.placeholder((64,), name="a")
    func = te.create_prim_func([a, te.compute((64,), lambda i: a[i] + 1, name="b")])
    with tvm_compat.tensor_intrinsics_skipped():
        assert importlib.import_module(tvm_compat.TENSOR_INTRIN_MODULE) is sys.modules[tvm_compat.TENSOR_INTRIN_MODULE]
        context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=tvm.target.Target(
                                     {"kind": "llvm", "num-cores": 1}),
                                 space_generator="post-order-apply", search_strategy="replay-trace", num_threads=1)
    assert context.space_generator is not None
    assert (tvm_compat.TENSOR_INTRIN_MODULE in sys.modules) == already


# ---- tl2cgen: the generated main.c and recipe.json --------------------------------------------------

def _stumps(trees: int):
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    builder = ModelBuilder(threshold_type="float32", leaf_output_type="float32",
                           metadata=Metadata(num_feature=2, task_type="kRegressor", average_tree_output=False,
                                             num_target=1, num_class=[1], leaf_vector_shape=(1, 1)),
                           tree_annotation=TreeAnnotation(num_tree=trees, target_id=[0] * trees, class_id=[0] * trees),
                           postprocessor=PostProcessorFunc(name="identity"), base_scores=[0.5])
    for tree in range(trees):
        builder.start_tree()
        builder.start_node(0)
        builder.numerical_test(feature_id=tree % 2, threshold=0.5, default_left=True, opname="<",
                               left_child_key=1, right_child_key=2)
        builder.end_node()
        for key, value in ((1, float(tree)), (2, -float(tree))):
            builder.start_node(key)
            builder.leaf(value)
            builder.end_node()
        builder.end_tree()
    return builder.commit()


def _generate(tmp_path: Path, params: dict) -> Path:
    import tl2cgen

    source = tmp_path / "src"
    tl2cgen.generate_c_code(_stumps(3), source, params)
    return source


def test_tl2cgen_predict_splits_into_units_and_epilogue(tmp_path: Path):
    parts = tl2cgen_compat.split_predict((_generate(tmp_path, {"parallel_comp": 2}) / "main.c").read_text())
    assert parts.units == ("predict_unit0", "predict_unit1")
    assert "result[0] += 0.5;" in parts.epilogue and "postprocess" not in parts.epilogue
    assert "predict_unit" not in parts.prologue


def test_tl2cgen_predict_with_inline_trees_has_no_units(tmp_path: Path):
    main_c = (_generate(tmp_path, {}) / "main.c").read_text()
    assert tl2cgen_compat.split_predict(main_c) == tl2cgen_compat.PredictParts("", (), "")


def test_tl2cgen_recipe_takes_kilns_sources_and_drops_the_units(tmp_path: Path):
    source = _generate(tmp_path, {"parallel_comp": 2})
    tl2cgen_compat.keep_main_only(source)
    tl2cgen_compat.add_source(source, "kiln_extra", "int kiln_extra(void) { return 1; }\n")
    assert "void predict(" not in (source / "main.c").read_text()
    assert "get_num_feature" in (source / "main.c").read_text()
    recipe = json.loads((source / "recipe.json").read_text())
    assert [entry["name"] for entry in recipe["sources"]] == ["main", "kiln_extra"]
    assert (source / "kiln_extra.c").is_file()


# ---- onnx: every tensor that may hold external data -------------------------------------------------

def test_onnx_all_tensors_reaches_subgraphs_and_attributes():
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    assert callable(external_data_helper._get_all_tensors)
    then = helper.make_graph([helper.make_node("Identity", ["inner"], ["y_then"])], "then", [],
                             [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1])],
                             initializer=[numpy_helper.from_array(np.ones(1, np.float32), "inner")])
    attribute = numpy_helper.from_array(np.zeros(1, np.float32), "attr")
    constant = helper.make_node("Constant", [], ["y_else"], value=attribute)
    other = helper.make_graph([constant], "else", [], [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [1])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[numpy_helper.from_array(np.ones(2, np.float32), "outer")])
    names = {tensor.name for tensor in onnx_compat.all_tensors(helper.make_model(graph))}
    assert names == {"outer", "inner", "attr"}
