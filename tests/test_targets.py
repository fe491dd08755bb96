"""Target presets: what they resolve to, that each family's artifact is built for its architecture,
that it runs (x86 here, aarch64 under qemu-user) like ONNX Runtime, and the errors for bad targets."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.errors import TargetError
from kiln.targets import PRESETS, Family, resolve
from kiln.targets.host import cpu_flags
from kiln.testing.aarch64 import missing_tools, run_artifact
from kiln.testing.paths import DIGITS_CNN, DIGITS_TEST, TREE_MODELS
from kiln.testing.reference import check_correctness, compile_to, library_of, onnxruntime_outputs

DIGITS = np.load(DIGITS_TEST)["input"][:2]
TREE_MODEL = TREE_MODELS / "xgb_regression_nan.json"
EM_X86_64, EM_AARCH64, EM_CUDA = 62, 183, 190
FATBIN_MAGIC, FATBIN_ELF, FATBIN_PTX = 0xBA55ED50, 2, 1
HAS_NVCC = shutil.which("nvcc") is not None


def _compile(target: str, output: Path, model: Path = DIGITS_CNN, images: np.ndarray = DIGITS) -> Path:
    return compile_to(model, output, target, shapes={"input": images.shape} if model == DIGITS_CNN else {})


def _elf_machine(library: Path) -> int:
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    return struct.unpack_from("<H", header, 18)[0]


# ---- 1. the registry -------------------------------------------------------------------------

EXPECTED = {
    "x86-64": (Family.X86, {"mcpu": "haswell"}, "avx2"),
    "x86-avx2": (Family.X86, {"mcpu": "haswell"}, "avx2"),
    "x86-avx512": (Family.X86, {"mcpu": "skylake-avx512"}, "avx512bw"),
    "x86-vnni": (Family.X86, {"mcpu": "cascadelake"}, "avx512-vnni"),
    "aarch64": (Family.AARCH64, {"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, "neon"),
    "aarch64-dotprod": (Family.AARCH64, {"mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod"]}, "sdot"),
    "aarch64-sve": (Family.AARCH64, {"mcpu": "neoverse-v1", "mattr": ["+neon", "+dotprod", "+sve"]}, "sdot"),
    **{f"cuda-sm{arch}": (Family.CUDA, {"kind": "cuda", "arch": f"sm_{arch}"}, "dp4a")
       for arch in ("70", "75", "80", "86", "89", "90")},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_resolves_to_its_tvm_target(name: str):
    import tvm

    family, attrs, int8_isa = EXPECTED[name]
    preset = resolve(name)
    assert (preset.family, preset.int8_isa) == (family, int8_isa)
    assert preset.tvm_target.items() >= attrs.items()
    target = tvm.target.Target(preset.tvm_target)  # TVM accepts it as is
    assert target.kind.name == preset.tvm_target["kind"]
    if family is Family.CUDA:
        assert target.host.kind.name == "llvm" and preset.requires == (f"{name[-2]}.{name[-1]}",)
    if family is Family.AARCH64:
        assert preset.toolchain.compiler == "aarch64-linux-gnu-gcc"


def test_host_preset_is_this_cpu():
    from tvm.target import codegen

    preset = resolve("host")
    assert preset.tvm_target["mcpu"] == codegen.llvm_get_system_cpu()
    assert set(preset.requires) <= cpu_flags()


@pytest.mark.parametrize("name, flags, missing", [
    ("aarch64-dotprod", {"asimd"}, "asimddp"),
    ("aarch64-sve", {"asimd", "asimddp"}, "sve"),
])
def test_an_aarch64_artifact_needs_the_features_its_code_uses(name: str, flags: set[str], missing: str):
    from kiln.targets.host import check_cpu

    with pytest.raises(TargetError, match=f"needs the {missing} instruction set; the board lacks it. Rebuild with "
                                          r"--target aarch64 \(NEON only\)"):
        check_cpu(PRESETS[name], "aarch64", frozenset(flags), "the board")
    check_cpu(PRESETS[name], "aarch64", frozenset(flags | {missing}), "the board")


@pytest.mark.parametrize("spec, family, requires", [
    ('{"kind": "llvm", "mcpu": "znver3"}', Family.X86, ("avx2", "fma")),
    ('{"kind": "llvm", "mcpu": "cascadelake"}', Family.X86,
     ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni")),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n2"}', Family.AARCH64, ()),
    ('{"kind": "cuda", "arch": "sm_90a"}', Family.CUDA, ("9.0",)),
])
def test_raw_tvm_json_target(spec: str, family: Family, requires: tuple[str, ...]):
    preset = resolve(spec)
    assert (preset.name, preset.family, preset.requires) == ("custom", family, requires)
    if family is Family.CUDA:
        assert preset.tvm_target["host"]["kind"] == "llvm"


def test_targets_command_lists_every_preset_as_json(cli_runner):
    result = cli_runner.invoke(cli, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    listed = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert set(EXPECTED) <= set(listed)
    assert listed["aarch64-dotprod"]["toolchain"] == "aarch64-linux-gnu-gcc"
    assert listed["cuda-sm90"]["tvm_target"]["arch"] == "sm_90"
    assert all(entry["description"] and entry["int8_isa"] for entry in listed.values())


# ---- 2. CUDA: kernels compiled by nvcc into the library ---------------------------------------

def _embedded_device_code(library: Path):
    """The CUDA module inside an exported library, read back from its `__tvm_ffi__library_bin`."""
    import tvm  # noqa: F401  (loads the TVM runtime the library's symbols resolve against)
    from kiln.compiler.backends.tvm.cuda import DeviceCode, LibraryBin

    handle = ctypes.CDLL(str(library))
    address = ctypes.addressof(ctypes.c_char.in_dll(handle, "__tvm_ffi__library_bin"))
    (size,) = struct.unpack("<Q", ctypes.string_at(address, 8))
    modules = LibraryBin.parse(ctypes.string_at(address, 8 + size)).modules
    assert [kind for kind, _ in modules] == ["relax.VMExecutable", "_lib", "cuda"]
    return DeviceCode.parse(modules[2][1])


def _fatbin_entries(fatbin: bytes) -> list[tuple[int, int, bytes]]:
    """(kind, SM architecture, payload) of each entry of an NVIDIA fatbin."""
    magic, _version, header_size, size = struct.unpack_from("<IHHQ", fatbin)
    assert magic == FATBIN_MAGIC
    entries, offset = [], header_size
    while offset < header_size + size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", fatbin, offset)
        (arch,) = struct.unpack_from("<I", fatbin, offset + 28)
        entries.append((kind, arch, fatbin[offset + entry_header:offset + entry_header + payload]))
        offset += entry_header + payload
    return entries


@pytest.fixture(scope="module")
def cuda_sm80(tmp_path_factory) -> Path:
    if not HAS_NVCC:
        pytest.skip("nvcc is not installed (CUDA toolkit); CUDA builds need it")
    return _compile("cuda-sm80", tmp_path_factory.mktemp("cuda") / "digits-sm80.kiln")


@pytest.mark.cuda
@pytest.mark.parametrize("target", ["cuda-sm80", "cuda-sm90"])
def test_cuda_library_carries_a_fatbin_for_the_requested_arch(target: str, cuda_sm80: Path, tmp_path: Path):
    artifact = cuda_sm80 if target == "cuda-sm80" else _compile(target, tmp_path / "digits.kiln")
    library = library_of(artifact)
    assert _elf_machine(library) == EM_X86_64  # the host side
    code = _embedded_device_code(library)
    assert code.fmt == "fatbin"
    assert "fused_conv2d_add_relu_kernel" in code.kernel_names
    arch = int(target[-2:])
    entries = _fatbin_entries(code.code)
    assert {(kind, entry_arch) for kind, entry_arch, _ in entries} == {(FATBIN_ELF, arch), (FATBIN_PTX, arch)}
    cubin = next(payload for kind, _, payload in entries if kind == FATBIN_ELF)
    assert _elf_machine_of_bytes(cubin) == EM_CUDA and f"sm_{arch}".encode() in cubin
    assert json.loads((artifact / "manifest.json").read_text())["target"]["tvm_target"]["arch"] == f"sm_{arch}"


def _elf_machine_of_bytes(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return struct.unpack_from("<H", data, 18)[0]


_LOAD_WITH_STUB_DRIVER = """
import ctypes, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)  # stands in for the NVIDIA driver's libcuda.so.1
ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_GLOBAL)  # the CUDA 13 runtime from the toolkit
import tvm, tvm_ffi
assert tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None
module = tvm.runtime.load_module(sys.argv[3])
stack, cuda = [module], []
while stack:
    current = stack.pop()
    stack.extend(current.imports)
    cuda += [current] if current.kind == "cuda" else []
(device,) = cuda
# A module loaded as source ("cuda") would have been JIT-compiled on load, keeping its source.
assert device.inspect_source("cuda") == "", "the library carries CUDA source, not compiled code"
print(device.get_function("fused_conv2d_add_relu_kernel") is not None)
"""


@pytest.mark.cuda
def test_cuda_library_loads_through_tvms_own_cuda_loader(cuda_sm80: Path, tmp_path: Path):
    """TVM's libtvm_runtime_cuda.so reads kiln's fatbin module (driver calls wait for a real GPU)."""
    import tvm

    runtime_cuda = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    cudart = ctypes.util.find_library("cudart")
    if cudart != "libcudart.so.13":
        pytest.skip("no CUDA 13 runtime (libcudart.so.13) for libtvm_runtime_cuda.so to link against")
    driver_calls = subprocess.run(["nm", "-D", "--undefined-only", str(runtime_cuda)], capture_output=True,
                                  text=True, check=True).stdout.split()
    stub = tmp_path / "libcuda.c"
    stub.write_text("".join(f"int {name.split('@')[0]}(void) {{ return 999; }}\n"
                            for name in driver_calls if name.startswith("cu") and name[2].isupper()))
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp_path / "libcuda.so.1"),
                    str(stub)], check=True)
    done = subprocess.run([sys.executable, "-c", _LOAD_WITH_STUB_DRIVER, str(tmp_path / "libcuda.so.1"), str(cudart),
                           str(library_of(cuda_sm80))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-3000:]


@pytest.mark.cuda
def test_cuda_artifact_without_a_gpu_says_what_is_missing(cuda_sm80: Path):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU: benchmarks/gpu_check.sh runs the artifact")
    with pytest.raises(TargetError, match="cuda-sm80 and needs an NVIDIA GPU"):
        kiln.load(cuda_sm80)


def test_nvcc_that_lacks_the_arch_names_what_it_supports(tmp_path: Path, monkeypatch):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$1" in --list-gpu-code) echo sm_75; echo sm_80;; '
                    '*) echo "Cuda compilation tools, release 13.0, V13.0.88";; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(TargetError, match=r"compiles for sm_70; this one \(CUDA 13.0\) supports sm_75, sm_80"):
        _compile("cuda-sm70", tmp_path / "out.kiln")


# ---- 3. aarch64: cross-linked, run under qemu-user -------------------------------------------

@pytest.mark.qemu
@pytest.mark.parametrize("target", ["aarch64", "aarch64-dotprod", "aarch64-sve"])
def test_aarch64_artifact_runs_under_qemu_like_onnxruntime(target: str, tmp_path: Path):
    assert not missing_tools(), f"install {' '.join(missing_tools())} (apt-get) to run aarch64 artifacts"
    artifact = _compile(target, tmp_path / "digits.kiln")
    assert _elf_machine(library_of(artifact)) == EM_AARCH64
    (logits,) = run_artifact(artifact, [DIGITS], tmp_path / "run")
    (expected,) = onnxruntime_outputs(DIGITS_CNN, {"input": DIGITS})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(TargetError, match="this host is x86_64"):
        kiln.load(artifact)


@pytest.mark.qemu
def test_aarch64_winograd_conv_runs_under_qemu_like_onnxruntime(tmp_path: Path):
    # at batch 16 the digits CNN's second conv (16 -> 32 channels, 8x8) has 4.7 M multiply-adds: Winograd
    images = np.load(DIGITS_TEST)["input"][:16]
    artifact = _compile("aarch64", tmp_path / "digits16.kiln", images=images)
    assert json.loads((artifact / "manifest.json").read_text())["build"]["schedules"]["conv2d_winograd"] == 1
    (logits,) = run_artifact(artifact, [images], tmp_path / "run")
    (expected,) = onnxruntime_outputs(DIGITS_CNN, {"input": images})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_aarch64_sve_artifact_uses_sve_instructions(tmp_path: Path):
    artifact = _compile("aarch64-sve", tmp_path / "digits.kiln")
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(library_of(artifact))], capture_output=True,
                             text=True, check=True).stdout
    assert "whilelo" in listing and "ptrue" in listing  # SVE predicated loops


def test_aarch64_tree_artifact_is_an_aarch64_library(tmp_path: Path):
    artifact = compile_to(TREE_MODEL, tmp_path / "tree.kiln", "aarch64-dotprod")
    assert _elf_machine(library_of(artifact)) == EM_AARCH64


# ---- x86: every preset this CPU runs matches ONNX Runtime; the others name what is missing ----

@pytest.mark.parametrize("target", [name for name, preset in PRESETS.items() if preset.family is Family.X86])
def test_x86_preset_matches_onnxruntime_or_names_the_missing_isa(target: str, tmp_path: Path):
    missing = sorted(set(PRESETS[target].requires) - cpu_flags())
    if not missing:
        artifact = check_correctness(DIGITS_CNN, {"input": DIGITS}, tmp_path, target=target)
        assert _elf_machine(library_of(artifact)) == EM_X86_64
        return
    artifact = _compile(target, tmp_path / "digits.kiln")
    assert _elf_machine(library_of(artifact)) == EM_X86_64
    with pytest.raises(TargetError, match=missing[0]):
        kiln.load(artifact)


# ---- 4. errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("x86-avx51", "Did you mean x86-avx512"),
    ("cuda-sm8", r"Did you mean cuda-sm8\d, cuda-sm8\d, cuda-sm8\d"),
    ("aarch64-dotpod", "Did you mean aarch64-dotprod"),
    ('{"kind": "llvm", ', "not valid JSON"),
    ('{"mcpu": "znver3"}', 'with a "kind" key'),
    ('{"kind": "opencl"}', "kiln builds for llvm"),
    ('{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}', "kiln builds for llvm"),
    ('{"kind": "llvm", "mcpu": "cascadelak"}', "Did you mean cascadelake"),
    ('{"kind": "llvm", "bogus": 1}', "Unknown config option 'bogus'"),
    ('{"kind": "cuda"}', "not of the form sm_80"),
])
def test_bad_target_names_the_fix(spec: str, message: str):
    with pytest.raises(TargetError, match=message):
        resolve(spec)


def test_bad_target_exits_with_the_target_error_code(cli_runner, tmp_path: Path):
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:1x1x8x8",
                                     "-t", "cuda-sm8", "-o", str(tmp_path / "o.kiln")])
    assert result.exit_code == TargetError.exit_code and "cuda-sm80" in result.output


def _path_without(tool: str, tmp_path: Path) -> str:
    """A PATH with every program of the current one except `tool`."""
    folder = tmp_path / "path"
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            if program.name != tool and not (folder / program.name).exists():
                (folder / program.name).symlink_to(program)
    return str(folder)


@pytest.mark.parametrize("target, tool, package", [
    ("aarch64", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("cuda-sm80", "nvcc", "nvidia-cuda-toolkit"),
])
def test_missing_compiler_names_its_package(target: str, tool: str, package: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", _path_without(tool, tmp_path))
    with pytest.raises(TargetError, match=f"needs {tool}.*apt-get install {package}"):
        _compile(target, tmp_path / "out.kiln")
    assert not (tmp_path / "out.kiln").exists()
