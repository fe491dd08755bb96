"""The serverless example's container image, built and measured without Docker: examples/serverless/Dockerfile's
steps replayed on a Debian root filesystem made with debootstrap, then its handler run inside it (chroot).

    sudo .venv/bin/python benchmarks/container_image.py [--workdir /tmp/kiln-image] [--keep-rootfs] [--json]

Needs root (debootstrap, mount, chroot), debootstrap, and the network: Debian's mirror (the one apt uses here)
and PyPI. It builds the runtime wheel and compiles the digits CNN (the Dockerfile header's commands) into a
build context under the work folder, then reads the Dockerfile and replays it:

- `FROM debian:bookworm-slim`: `debootstrap --variant=minbase bookworm`, then what debuerreotype (the tool that
  builds Docker's official Debian images) does for a slim image: dpkg path excludes for docs, man pages and
  locales (and those files deleted), its apt settings (no caches, no translations), no apt lists or logs;
- `RUN`: `chroot ROOTFS /bin/sh -c ...` with the Dockerfile's ENV, /proc, /sys and bind mounts in place;
- `COPY`: a copy from the build context.

Sizes: the root filesystem's total (du, apparent size, /proc /sys /dev left out), the base (every step before
the first one that installs kiln) and what kiln's steps add (the wheel's install with its dependencies from
PyPI, the artifact, the handler). Each step's layer is what Docker would store for it: every file the step
created or changed (a changed file weighs again in the later layer). Then the handler answers one event (run as
a script, and over HTTP as the Dockerfile's CMD) and must return the host's kiln outputs for the same artifact
exactly. Exits 1 on a mismatch, 2 when it cannot run here. Mounts are undone on every exit path.

Without --workdir everything lives in a temporary folder that is removed; with it the folder keeps the
debootstrap package cache (reruns download less) and the root filesystem is rebuilt from scratch each time.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "serverless"
DIGITS = REPO / "examples" / "digits_cnn"
SUITE = "bookworm"
BASE_IMAGE = f"debian:{SUITE}-slim"
SKIPPED = ("proc", "sys", "dev")  # kernel file systems and device nodes: not image content
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# debuerreotype's scripts/.slimify-excludes and .slimify-includes (what makes debian:*-slim slim)
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/groff/*", "/usr/share/info/*", "/usr/share/linda/*",
                 "/usr/share/lintian/overrides/*", "/usr/share/locale/*", "/usr/share/man/*")
SLIM_INCLUDES = ("/usr/share/doc/*/copyright", "/usr/share/doc/kde/HTML/C/*", "/usr/share/gnome/help/*/C/*",
                 "/usr/share/locale/all_languages", "/usr/share/locale/currency/*", "/usr/share/locale/l10n/*",
                 "/usr/share/locale/languages", "/usr/share/locale/locale.alias", "/usr/share/omf/*/*-C.emf")
# debuerreotype-minimizing-config: the settings every official Debian image carries (comments dropped)
_CLEAN = '"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
MINIMIZING = {
    "usr/sbin/policy-rc.d": "#!/bin/sh\nexit 101\n",
    "etc/dpkg/dpkg.cfg.d/docker-apt-speedup": "force-unsafe-io\n",
    "etc/apt/apt.conf.d/docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
    "etc/apt/apt.conf.d/docker-clean": (f"DPkg::Post-Invoke {{ {_CLEAN} }};\nAPT::Update::Post-Invoke {{ {_CLEAN} }};\n"
                                        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    "etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
}
# debuerreotype-fixup and .tar-exclude: logs and caches that the official tarball leaves out
FIXUP = ("var/log/dpkg.log", "var/log/bootstrap.log", "var/log/alternatives.log", "var/cache/ldconfig/aux-cache",
         "var/log/apt/history.log", "var/log/apt/term.log", "etc/apt/apt.conf.d/01autoremove-kernels",
         "etc/apt/sources.list")
DIFFERENCES = (
    f"The root filesystem is what {EXAMPLE.relative_to(REPO)}/Dockerfile builds, less Docker's metadata: its base",
    f"is made the way {BASE_IMAGE} is (debuerreotype: debootstrap minbase + slimify), from today's mirror, not",
    "the published image's snapshot date, so package versions may differ by Debian's point updates. The",
    "python:3.11-slim image the example used before (not measured here) is that same Debian base plus",
    "ca-certificates, netbase, tzdata and CPython 3.11 built from source in /usr/local (pip, setuptools, wheel;",
    "no .pyc files); here Python is Debian's python3 3.11 package with its .pyc files, and kiln lives in a venv",
    "(/opt/venv), as Debian's externally-managed Python asks.",
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(command: list[str], log: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `command`; on failure name it and show the end of its output."""
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kwargs)
    if log is not None:
        with log.open("a") as file:
            file.write(f"$ {shlex.join(command)}\n{done.stdout}\n")
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command)}` exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done


# ---- mounts: every one this script makes is undone, and nothing is deleted while something is mounted in it

def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # mountinfo writes spaces as \040
        if point == prefix or point.startswith(prefix + "/"):
            points.append(Path(point))
    return sorted(points, key=lambda p: -len(p.parts))


def _unmount_all(path: Path) -> None:
    for point in _mounts_under(path):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True)
    if _mounts_under(path):
        raise RuntimeError(f"could not unmount {', '.join(map(str, _mounts_under(path)))}: unmount by hand")


def _remove(path: Path) -> None:
    if path.exists():
        _unmount_all(path)  # rm -r through a bind mount would delete the host's files
        shutil.rmtree(path)


class _Chroot:
    """/proc and /sys mounted in `root` while the block runs (apt, dpkg and kiln's host checks read them)."""

    def __init__(self, root: Path, binds: dict[str, Path] | None = None):
        self.root, self.binds, self.made = root, binds or {}, []

    def __enter__(self) -> _Chroot:
        try:
            _run(["mount", "-t", "proc", "proc", str(self.root / "proc")])
            _run(["mount", "-t", "sysfs", "-o", "ro", "sysfs", str(self.root / "sys")])
            for target, source in self.binds.items():
                point = self.root / target.lstrip("/")
                if not point.exists():
                    point.mkdir(parents=True)
                    self.made.append(point)
                _run(["mount", "--bind", "-o", "ro", str(source), str(point)])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _unmount_all(self.root)
        for point in self.made:  # a bind mount's empty mount point is no part of the image (BuildKit's neither)
            point.rmdir()


# ---- the Dockerfile, read as the few instructions this one uses

def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.strip() if current else raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        keyword, _, rest = current.strip().partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        current = ""
    return lines


def _expand(value: str, env: dict[str, str]) -> str:
    for name, setting in env.items():
        value = value.replace(f"${{{name}}}", setting).replace(f"${name}", setting)
    return value


# ---- sizes

def _inventory(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path below `root` (kernel file systems left out) -> (inode, bytes, mtime, ctime)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in SKIPPED]
        for name in dirs + files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            size = stat.st_size if os.path.isfile(path) and not os.path.islink(path) else 0
            found[os.path.relpath(path, root)] = (stat.st_ino, size, stat.st_mtime_ns, stat.st_ctime_ns)
    return found


def _changed(before: dict, after: dict) -> dict[str, tuple]:
    return {path: entry for path, entry in after.items() if before.get(path) != entry}


def _bytes(entries: dict[str, tuple]) -> int:
    """File bytes, a hard-linked file once."""
    return sum({entry[0]: entry[1] for entry in entries.values()}.values())


def _du(root: Path) -> dict[str, int]:
    skip = [f"--exclude=./{name}" for name in SKIPPED]
    apparent = _run(["du", "-sx", "--apparent-size", "-B1", *skip, "."], cwd=root).stdout.split()[0]
    disk = _run(["du", "-sx", "-B1", *skip, "."], cwd=root).stdout.split()[0]
    return {"apparent_bytes": int(apparent), "disk_bytes": int(disk)}


def _distributions(root: Path, changed: dict[str, tuple]) -> dict[str, int]:
    """Python distributions that kiln's steps installed -> bytes of the files their RECORD lists."""
    sizes = {}
    for record in sorted(p for p in changed if p.endswith(".dist-info/RECORD")):
        site = (root / record).parents[1]
        name = (root / record).parent.name.split("-")[0].replace("_", "-").lower()
        total = 0
        for line in (root / record).read_text().splitlines():
            file = site / line.rsplit(",", 2)[0]
            if file.is_file() and not file.is_symlink():
                total += file.stat().st_size
        sizes[name] = total
    return sizes


# ---- the build

def _mirrors() -> tuple[str, str]:
    """(Debian mirror, security mirror) from apt's sources here, deb822 or one-line form."""
    main, security = "", ""
    files = sorted(glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*.sources")
                   + glob.glob("/etc/apt/sources.list.d/*.list"))
    for file in files:
        text = Path(file).read_text()
        entries = []  # (uri, suites)
        if file.endswith(".sources"):
            for stanza in text.split("\n\n"):
                fields = dict(line.split(":", 1) for line in stanza.splitlines()
                              if ":" in line and not line.startswith("#"))
                if "deb" in fields.get("Types", "").split():
                    entries.append((fields.get("URIs", "").split()[0], fields.get("Suites", "").split()))
        else:
            for line in text.splitlines():
                parts = line.split()
                if parts[:1] == ["deb"] and len(parts) >= 3:
                    parts = [p for p in parts if not p.startswith("[")]
                    entries.append((parts[1], [parts[2]]))
        for uri, suites in entries:
            if SUITE in suites and not main:
                main = uri.rstrip("/")
            if f"{SUITE}-security" in suites and not security:
                security = uri.rstrip("/")
    if not main:
        raise RuntimeError(f"no apt source for {SUITE} in /etc/apt/sources.list*: pass --mirror")
    return main, security or "http://deb.debian.org/debian-security"


def _context(folder: Path) -> Path:
    """The Dockerfile's build context: the runtime wheel in dist/, the digits CNN as model.kiln, handler.py."""
    from kiln.runtime_wheel import build

    context = folder / "context"
    _remove(context)
    context.mkdir(parents=True)
    _log("building the runtime wheel and compiling the digits CNN ...")
    build(context / "dist")
    kiln_cli = Path(sys.executable).with_name("kiln")
    _run([str(kiln_cli), "compile", str(DIGITS / "digits_cnn.onnx"), "--input-shape", "input:1x1x8x8",
          "-o", str(context / "model.kiln")])
    for name in ("Dockerfile", "handler.py"):
        shutil.copy2(EXAMPLE / name, context / name)
    return context


def _base(root: Path, cache: Path, mirror: str, security: str, log: Path) -> None:
    """debian:bookworm-slim as debuerreotype makes it, from `mirror`."""
    _log(f"debootstrap --variant=minbase {SUITE} from {mirror} (a few minutes) ...")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _run(["debootstrap", "--variant=minbase", f"--cache-dir={cache}", SUITE, str(root), mirror], log=log)
    finally:
        _unmount_all(root)  # debootstrap mounts /proc and /sys while it installs
    for relative, text in MINIMIZING.items():
        (root / relative).write_text(text)
    os.chmod(root / "usr/sbin/policy-rc.d", 0o755)
    dpkg = ["# the slim variant: files containers do not need stay out"]
    dpkg += [f"path-exclude {p}" for p in SLIM_EXCLUDES] + [f"path-include {p}" for p in SLIM_INCLUDES]
    (root / "etc/dpkg/dpkg.cfg.d/docker").write_text("\n".join(dpkg) + "\n")
    keep = [arg for p in SLIM_INCLUDES for arg in ("-o", "-path", p)][1:]
    for pattern in SLIM_EXCLUDES:
        folder = os.path.dirname(pattern)
        if (root / folder.lstrip("/")).is_dir():
            _run(["chroot", str(root), "find", folder, "-depth", "-mindepth", "1", "-not", "(", *keep, ")",
                  "-not", "(", "-type", "d", "-o", "-type", "l", ")", "-delete"])
            while _run(["chroot", str(root), "find", folder, "-depth", "-mindepth", "1", "(", "-empty", "-o",
                        "-xtype", "l", ")", "-exec", "rm", "-rf", "{}", ";", "-printf", "."]).stdout:
                pass
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    for relative in FIXUP:
        (root / relative).unlink(missing_ok=True)
    for folder in ("var/cache/apt", "var/lib/apt/lists"):
        for child in (root / folder).iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _build_environment(root: Path) -> dict[str, str]:
    """What RUN steps get from this machine and Docker would not need: proxies, and the host's CA bundle for
    pip (a TLS-inspecting proxy's certificate is trusted only there). The bundle is deleted before measuring."""
    extra = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        shutil.copy2(bundle, root / "tmp" / ".build-ca.pem")
        extra["PIP_CERT"] = "/tmp/.build-ca.pem"
    return extra


def _replay(dockerfile: Path, context: Path, root: Path, cache: Path, log: Path) -> tuple[list[dict], dict, list]:
    """Build the root filesystem step by step; each step's layer, the final ENV and the CMD."""
    mirror, security = _mirrors()
    env = {"PATH": DOCKER_PATH, "HOME": "/root"}
    steps, cmd, inventory = [], [], {}
    for keyword, args in _instructions(dockerfile):
        started = time.perf_counter()
        if keyword == "FROM":
            if args != BASE_IMAGE:
                raise RuntimeError(f"this script reproduces only `FROM {BASE_IMAGE}`, the Dockerfile says `FROM {args}`")
            _base(root, cache, mirror, security, log)
        elif keyword == "RUN":
            binds = {}
            words = args.split(" ")
            while words[0].startswith("--mount="):
                options = dict(o.split("=", 1) for o in words.pop(0)[len("--mount="):].split(","))
                if options.get("type") != "bind":
                    raise RuntimeError(f"RUN --mount type {options.get('type')!r} is not replayed here")
                binds[options["target"]] = context / options.get("source", ".")
            script = " ".join(words)
            _log(f"RUN {script}")
            extra = _build_environment(root)
            try:
                with _Chroot(root, binds):
                    _run(["chroot", str(root), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in {**env, **extra}.items()],
                          "/bin/sh", "-c", script], log=log)
            finally:
                (root / "tmp" / ".build-ca.pem").unlink(missing_ok=True)
        elif keyword == "COPY":
            *sources, target = args.split()
            matches = [Path(m) for s in sources for m in sorted(glob.glob(str(context / s)))]
            if not matches:
                raise RuntimeError(f"COPY {args}: nothing in the build context matches")
            destination = root / target.lstrip("/")
            for source in matches:
                into = destination / source.name if target.endswith("/") else destination
                into.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, into)
        elif keyword == "ENV":
            name, _, value = args.partition("=") if "=" in args.split(" ")[0] else args.partition(" ")
            env[name.strip()] = _expand(value.strip().strip('"'), env)
        elif keyword == "CMD":
            cmd = json.loads(args)
        if keyword in ("FROM", "RUN", "COPY"):
            after = _inventory(root)
            changed = _changed(inventory, after)
            steps.append({"step": f"{keyword} {args}", "layer_bytes": _bytes(changed),
                          "rootfs_bytes": _bytes(after), "seconds": round(time.perf_counter() - started, 1),
                          "changed": changed})
            inventory = after
    return steps, env, cmd


# ---- the check: one event through the handler in the root filesystem vs the host's kiln

def _check(context: Path, root: Path, env: dict[str, str], cmd: list[str]) -> dict:
    import kiln

    with np.load(DIGITS / "digits_test.npz") as archive:
        sample = archive["input"][:1]
    expected = kiln.load(context / "model.kiln").run({"input": sample})
    event = {"inputs": {"input": sample.tolist()}}
    (root / "tmp" / "event.json").write_text(json.dumps(event))
    chroot = ["chroot", str(root), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()]]

    def same(reply: dict) -> bool:
        outputs = reply.get("outputs", {})
        return set(outputs) == set(expected) and all(
            np.array_equal(np.asarray(outputs[name], dtype=value.dtype), value) for name, value in expected.items())

    result = {}
    with _Chroot(root):
        compiler = subprocess.run([*chroot, "python", "-c", "import tvm.relax"], capture_output=True)
        result["compiler_importable"] = compiler.returncode == 0
        script = _run([*chroot, "python", cmd[1] if len(cmd) > 1 else "/opt/handler.py", "/tmp/event.json"])
        result["event_file"] = same(json.loads(script.stdout.strip().splitlines()[-1]))
        with socket.socket() as probe:  # the chroot shares this machine's network: take a free port
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        served = [port if part == "8080" else part for part in cmd]
        server = subprocess.Popen([*chroot, *served], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)
        try:
            reply, deadline = None, time.monotonic() + 60
            while reply is None and time.monotonic() < deadline and server.poll() is None:
                try:
                    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(event).encode(),
                                                     headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=10) as response:
                        reply = json.loads(response.read())
                except OSError:
                    time.sleep(0.3)
            result["served"] = reply is not None and same(reply)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    (root / "tmp" / "event.json").unlink()
    result["label"] = int(np.argmax(next(iter(expected.values()))))
    return result


def _report(steps: list[dict], root: Path, du: dict, check: dict, mirror: str) -> dict:
    first_kiln = next((i for i, s in enumerate(steps) if "kiln" in s["step"]), 0)
    if first_kiln == 0:
        raise RuntimeError("no Dockerfile step after FROM mentions kiln: nothing to call what kiln adds")
    base, added = steps[first_kiln - 1]["rootfs_bytes"], steps[-1]["rootfs_bytes"] - steps[first_kiln - 1]["rootfs_bytes"]
    changed = {p: e for s in steps[first_kiln:] for p, e in s["changed"].items()}
    parts = {f"python: {name}": size for name, size in _distributions(root, changed).items()}
    for step in steps[first_kiln:]:
        if step["step"].startswith("COPY"):
            parts[step["step"].split()[1]] = step["layer_bytes"]
    parts["other files the steps changed"] = max(0, added - sum(parts.values()))
    python = _run(["chroot", str(root), "/usr/bin/python3", "--version"]).stdout.strip()
    return {
        "dockerfile": str((EXAMPLE / "Dockerfile").relative_to(REPO)), "mirror": mirror, "python": python,
        "steps": [{k: v for k, v in s.items() if k != "changed"} for s in steps],
        "rootfs_du": du, "layers_bytes": sum(s["layer_bytes"] for s in steps),
        "base_bytes": base, "kiln_adds_bytes": added, "kiln_adds": parts, "check": check,
        "differences": " ".join(DIFFERENCES),
    }


def _print(report: dict) -> None:
    mb = lambda n: f"{n / 1e6:8.1f}"  # noqa: E731
    print(f"{report['dockerfile']} replayed on debootstrap's Debian {SUITE} ({report['mirror']}), {report['python']}")
    print(f"\n{'step':72} {'layer MB':>8} {'rootfs MB':>9}")
    for step in report["steps"]:
        label = step["step"] if len(step["step"]) <= 72 else step["step"][:69] + "..."
        print(f"{label:72} {mb(step['layer_bytes'])} {mb(step['rootfs_bytes']):>9}")
    du = report["rootfs_du"]
    print(f"\n{'root filesystem (du, apparent size; on disk)':56} {mb(du['apparent_bytes'])} MB  "
          f"({du['disk_bytes'] / 1e6:.1f} MB in blocks)")
    print(f"{'the layers above, summed (a changed file counts again)':56} {mb(report['layers_bytes'])} MB")
    print(f"{'base: everything before kiln':56} {mb(report['base_bytes'])} MB")
    print(f"{'kiln adds':56} {mb(report['kiln_adds_bytes'])} MB")
    for name, size in report["kiln_adds"].items():
        print(f"  {name:54} {mb(size)} MB")
    check = report["check"]
    print(f"\nhandler in the root filesystem, digits test sample 0 (label {check['label']}): "
          f"event file {'matches' if check['event_file'] else 'DIFFERS from'} the host's kiln, "
          f"HTTP (the CMD) {'matches' if check['served'] else 'DIFFERS'}; `import tvm.relax` "
          f"{'SUCCEEDS (a compiler is in the image)' if check['compiler_importable'] else 'fails (no compiler)'}")
    print("\n" + "\n".join(DIFFERENCES))


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so the finally blocks unmount


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep the package cache here (default: a temporary folder)")
    parser.add_argument("--keep-rootfs", action="store_true", help="leave the root filesystem in the work folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    missing = [tool for tool in ("debootstrap", "chroot", "mount", "du") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        _log("needs root and " + (", ".join(missing) or "debootstrap") + " (Debian: apt-get install debootstrap)")
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="kiln-image-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root, log = workdir / "rootfs", workdir / "build.log"
    log.write_text("")
    failed = None
    try:
        _remove(root)  # a previous run's
        context = _context(workdir)
        steps, env, cmd = _replay(context / "Dockerfile", context, root, workdir / "debs", log)
        du = _du(root)
        check = _check(context, root, env, cmd)
        report = _report(steps, root, du, check, _mirrors()[0])
    except RuntimeError as error:
        failed = error
        return 2
    finally:
        _unmount_all(workdir)
        if not args.keep_rootfs:
            _remove(root)
            _remove(workdir / "context")
        if args.workdir is None and not args.keep_rootfs and failed is None:
            _remove(workdir)
        if failed is not None:
            _log(f"failed: {failed}\n(the commands' output: {log})")
    print(json.dumps(report, indent=1)) if args.json else _print(report)
    ok = check["event_file"] and check["served"] and not check["compiler_importable"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
