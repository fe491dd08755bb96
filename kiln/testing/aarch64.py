"""Run aarch64 neural artifacts on this x86 machine: aarch64_vm_runner.cc cross-compiled against the
aarch64 TVM runtime from the registry's apache-tvm wheels, executed under qemu-user.

The aarch64 wheels (same versions as the installed x86 ones) are downloaded with pip once and
unpacked into .kiln-test-cache/aarch64-tvm/<versions>/, next to the built runner.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from kiln.testing.paths import TEST_CACHE
from kiln.testing.reference import library_of

CACHE = TEST_CACHE / "aarch64-tvm"
RUNNER_SOURCE = Path(__file__).resolve().with_name("aarch64_vm_runner.cc")
SYSROOT = Path("/usr/aarch64-linux-gnu")
CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
# wheel -> the aarch64 libraries the runner links against
_RUNTIME_LIBRARIES = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


def missing_tools() -> list[str]:
    """Debian packages this module needs that are not installed."""
    needs = {CXX: "g++-aarch64-linux-gnu", QEMU: "qemu-user"}
    return [package for tool, package in needs.items() if shutil.which(tool) is None]


def run_artifact(artifact: Path, inputs: list[np.ndarray], workdir: Path) -> list[np.ndarray]:
    """Run `artifact`'s model.so under qemu-aarch64 on float32 inputs; its float32 outputs."""
    runner = _runner()
    workdir.mkdir(parents=True, exist_ok=True)
    specs = []
    for index, array in enumerate(inputs):
        path = workdir / f"input_{index}.bin"
        np.ascontiguousarray(array, dtype=np.float32).tofile(path)
        specs.append("x".join(map(str, array.shape)) + f"={path}")
    done = subprocess.run([QEMU, "-L", str(SYSROOT), str(runner), str(library_of(artifact)), str(workdir), *specs],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"vm_runner failed ({done.returncode}): {done.stderr.strip()}")
    outputs = []
    for line in done.stdout.splitlines():
        name, shape = line.split()
        data = np.fromfile(workdir / f"{name}.bin", dtype=np.float32)
        outputs.append(data.reshape([int(d) for d in shape.split("x")]))
    return outputs


def _runner() -> Path:
    """vm_runner for aarch64, built once per runner source and TVM version."""
    libraries = _runtime_libraries()
    runner = libraries / f"vm_runner-{hashlib.sha256(RUNNER_SOURCE.read_bytes()).hexdigest()[:12]}"
    if runner.is_file():
        return runner
    import tvm_ffi.libinfo

    command = [CXX, "-std=c++17", "-O1", f"-I{tvm_ffi.libinfo.find_include_path()}",
               f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}", str(RUNNER_SOURCE), f"-L{libraries}",
               "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN", "-o", f"{runner}.tmp"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    Path(f"{runner}.tmp").rename(runner)
    return runner


def _runtime_libraries() -> Path:
    """A folder with the aarch64 libtvm_runtime.so and libtvm_ffi.so matching the installed TVM."""
    versions = {name: metadata.version(name) for name in _RUNTIME_LIBRARIES}
    folder = CACHE / "-".join(f"{name}-{version}" for name, version in versions.items())
    if all((folder / Path(member).name).is_file() for member in _RUNTIME_LIBRARIES.values()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, member in _RUNTIME_LIBRARIES.items():
        with zipfile.ZipFile(aarch64_wheel(name)) as archive:
            (folder / Path(member).name).write_bytes(archive.read(member))
    return folder


def aarch64_wheel(distribution: str) -> Path:
    """The registry's aarch64 wheel of an installed distribution, same version, downloaded once."""
    version = metadata.version(distribution)
    wheels = CACHE / "wheels"
    pattern = f"{distribution.replace('-', '_')}-{version}-*.whl"
    if not any(wheels.glob(pattern)):
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux_2_28_aarch64", "--python-version", python, "--dest", str(wheels),
                        f"{distribution}=={version}"], check=True)
    return next(wheels.glob(pattern))


# Debian's arm64 packages an aarch64 CPython 3.11 needs to start, import numpy and ctypes, and load kiln's
# libraries (libstdc++ for TVM's runtime, libgomp for tree libraries); unpacked, not installed.
PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libstdc++6",
                   "libgcc-s1", "libgomp1", "libffi8", "zlib1g", "libexpat1", "libssl3", "libbz2-1.0", "liblzma5",
                   "libcrypt1", "libuuid1")


def python_root() -> Path:
    """A folder holding Debian's aarch64 python3.11 and the libraries it loads (usr/bin/python3.11, run it with
    `qemu-aarch64 -L <root>`), unpacked from the arm64 packages once. Needs the arm64 architecture in dpkg
    (scripts/system-deps.sh adds it)."""
    root = CACHE / "python-root" / hashlib.sha256(" ".join(PYTHON_PACKAGES).encode()).hexdigest()[:12]
    if (root / "usr" / "bin" / "python3.11").is_file():
        return root
    debs = root.with_name(root.name + ".debs")
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", *(f"{package}:arm64" for package in PYTHON_PACKAGES)], cwd=debs,
                   check=True, capture_output=True)
    staged = root.with_name(root.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(staged)], check=True)
    shutil.rmtree(debs)
    staged.rename(root)
    return root
