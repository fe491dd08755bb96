"""Build kiln-runtime: the wheel that loads, runs and benches kiln artifacts without the compiler.

It holds the modules `kiln.load`, `kiln run` and `kiln bench` import (the same files as the full install:
one implementation) and TVM's runtime libraries, copied from an apache-tvm wheel: the installed one by
default, or another platform's wheel file (aarch64). It depends on numpy, apache-tvm-ffi and click.
The wheel is written directly (a zip with its metadata), byte-identical for the same inputs.

    python -m kiln.runtime_wheel -o dist/                         # for this machine, from the installed TVM
    python -m kiln.runtime_wheel -o dist/ --tvm-wheel apache_tvm-0.27.0.post1-py3-none-manylinux_2_28_aarch64.whl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import re
import zipfile
from importlib import metadata
from pathlib import Path

NAME = "kiln-runtime"
PACKAGE_ROOT = Path(__file__).resolve().parent
# Every module the runtime imports, relative to the kiln package (tests/test_runtime_wheel.py runs them in a
# venv that has nothing else).
MODULES = (
    "__init__.py", "arrays.py", "bench.py", "cli_options.py", "cli_runtime.py", "dtypes.py", "errors.py", "files.py",
    "progress.py", "settings.py", "tvm_runtime.py",
    "compiler/__init__.py", "compiler/artifact.py", "compiler/batching.py", "compiler/graph.py",
    "compiler/manifest.py",
    "compiler/predictor.py", "compiler/backends/__init__.py", "compiler/backends/tree_runner.py",
    "compiler/backends/tvm/__init__.py",
    "compiler/backends/tvm/profile.py", "compiler/backends/tvm/runner.py",
    "remote/__init__.py", "remote/predictor.py", "remote/server.py", "remote/session.py",
    "targets/__init__.py", "targets/host.py", "targets/isa.py", "targets/llvm.py", "targets/presets.py",
)
# TVM's runtime libraries (never libtvm_compiler.so), installed as kiln/lib/ (tvm_runtime.BUNDLED).
LIBRARIES = ("libtvm_runtime.so", "libtvm_runtime_extra.so", "libtvm_runtime_cuda.so")
REQUIRES = ("numpy>=2.0,<2.5", "apache-tvm-ffi==0.1.14.post0", "click>=8.1,<9")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def build(output: Path, tvm_wheel: Path | None = None) -> Path:
    """Write the kiln-runtime wheel into folder `output`; its path."""
    libraries, tvm_license, platforms = (_from_wheel(tvm_wheel) if tvm_wheel else _from_installed_tvm())
    version = metadata.version("kiln-ml")
    files = {f"kiln/{module}": (PACKAGE_ROOT / module).read_bytes() for module in MODULES}
    files.update({f"kiln/lib/{name}": data for name, data in libraries.items()})
    files["kiln/lib/TVM-LICENSE"] = tvm_license
    info = f"kiln_runtime-{version}.dist-info"
    files[f"{info}/METADATA"] = _metadata(version).encode()
    files[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: kiln.runtime_wheel\nRoot-Is-Purelib: false\n"
                              + "".join(f"Tag: py3-none-{p}\n" for p in platforms.split("."))).encode()
    files[f"{info}/entry_points.txt"] = b"[console_scripts]\nkiln = kiln.cli_runtime:main\n"
    record = f"{info}/RECORD"
    files[record] = ("".join(f"{name},sha256={_digest(data)},{len(data)}\n" for name, data in sorted(files.items()))
                     + f"{record},,\n").encode()
    output.mkdir(parents=True, exist_ok=True)
    wheel = output / f"kiln_runtime-{version}-py3-none-{platforms}.whl"
    staged = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            entry = zipfile.ZipInfo(name, _EPOCH)
            entry.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            archive.writestr(entry, data, zipfile.ZIP_DEFLATED)
    staged.replace(wheel)
    return wheel


def _from_installed_tvm() -> tuple[dict[str, bytes], bytes, str]:
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("apache-tvm is not installed here; pass --tvm-wheel")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    distribution = metadata.distribution("apache-tvm")
    tags = [line.split(": ", 1)[1] for line in distribution.read_text("WHEEL").splitlines()
            if line.startswith("Tag: ")]
    license_text = distribution.read_text("licenses/LICENSE") or ""
    return ({name: (lib / name).read_bytes() for name in LIBRARIES}, license_text.encode(),
            ".".join(tag.split("-", 2)[2] for tag in tags))


def _from_wheel(wheel: Path) -> tuple[dict[str, bytes], bytes, str]:
    match = re.fullmatch(r"apache_tvm-[^-]+-[^-]+-[^-]+-(.+)\.whl", wheel.name)
    if not match:
        raise SystemExit(f"{wheel}: not an apache-tvm wheel (apache_tvm-VERSION-py3-none-PLATFORM.whl)")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        license_name = next((n for n in names if n.endswith(".dist-info/licenses/LICENSE")), None)
        return ({name: archive.read(f"tvm/lib/{name}") for name in LIBRARIES},
                archive.read(license_name) if license_name else b"", match.group(1))


def _metadata(version: str) -> str:
    return (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n"
            "Summary: Load, run and bench kiln artifacts without the compiler\nLicense: Apache-2.0\n"
            "Requires-Python: >=3.11\n" + "".join(f"Requires-Dist: {r}\n" for r in REQUIRES))


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kiln.runtime_wheel", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the wheel into")
    parser.add_argument("--tvm-wheel", type=Path, help="take TVM's runtime libraries from this apache-tvm wheel "
                                                      "(another platform's) instead of the installed apache-tvm")
    args = parser.parse_args()
    print(build(args.output, args.tvm_wheel))


if __name__ == "__main__":
    main()
