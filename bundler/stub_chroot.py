"""Runtime stubs for another architecture: PyInstaller inside an emulated Debian root.

The root filesystem is made once per Debian suite with debootstrap under qemu user emulation and
cached; the target's suite sets the glibc floor and the Python, which in turn caps the onnxruntime
version (bullseye: glibc 2.31, Python 3.9, onnxruntime 1.19.2, the newest with a cp39 aarch64 wheel;
bookworm: glibc 2.36, Python 3.11, onnxruntime 1.32.0). Needs root, debootstrap and qemu-user-static
with binfmt_misc (see .ci/system-packages).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bundler.errors import BuildError
from bundler.fs import atomic_folder
from bundler.progress import ProgressCallback
from bundler.stub_gate import compile_gate
from bundler.stub_recipe import REPRODUCIBLE_ENV, STUB_NAME, prepare_sources, write_spec
from targets import TargetProfile

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_ARCH = {"aarch64": "arm64", "x86_64": "amd64"}
QEMU_BINFMT = {"aarch64": "qemu-aarch64"}
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "binutils", "ca-certificates")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CHROOT_CA_BUNDLE = "/etc/edgebundle-host-ca.crt"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# Everything the stub environment holds, pinned and installed without dependency resolution:
# the runtime's packages (onnxruntime imports only numpy; tokenizers' hub client is not used) and
# PyInstaller with its own. All have cp39 and cp311 aarch64 wheels (checked with pip download), so
# the bullseye and bookworm roots share them; onnxruntime comes from the target profile.
CHROOT_PINS = (
    "numpy==1.26.4", "tokenizers==0.22.2", "jinja2==3.1.6", "MarkupSafe==3.0.2", "PyNaCl==1.5.0",
    "cffi==1.17.1", "pycparser==2.22", "PyStemmer==3.1.0", "simsimd==6.5.16", "pyinstaller==6.22.3",
    "pyinstaller-hooks-contrib==2026.9", "altgraph==0.17.4", "packaging==24.2", "setuptools==75.8.0",
    "importlib-metadata==8.6.1", "zipp==3.21.0",
)


def chroot_locked_dependencies(target: TargetProfile) -> dict[str, str]:
    pins = dict(pin.split("==") for pin in CHROOT_PINS)
    pins["onnxruntime"] = target.onnxruntime
    pins["debian"] = f"{target.debian_suite}/{DEBIAN_ARCH.get(target.arch, target.arch)}"
    return pins


def rootfs_path(target: TargetProfile, cache_dir: Path) -> Path:
    return cache_dir / "rootfs" / f"{target.debian_suite}-{DEBIAN_ARCH[target.arch]}"


def rootfs_command(root: Path, argv: list[str], binds: tuple[Path, ...] = ()) -> list[str]:
    """argv run inside `root` in a private mount namespace (proc, dev and `binds` mounted there).

    The host's /sys stays out of sight: onnxruntime under qemu crashes reading the host's CPU
    topology; the root carries plain files with CPU lists instead (_write_cpu_topology).
    """
    script = 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev"'
    for index, bind in enumerate(binds):
        script += f' && mkdir -p "$1{bind}" && mount --bind "${{{index + 2}}}" "$1{bind}"'
    script += f' && root="$1" && shift {1 + len(binds)} && exec chroot "$root" "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(root),
            *[str(b) for b in binds], *argv]


def build_in_chroot(target: TargetProfile, work: Path, cache_dir: Path, progress: ProgressCallback) -> Path:
    """Build the stub inside the target's cached root; returns the stub's path under `work`."""
    root = ensure_rootfs(target, cache_dir, progress)
    python = ensure_stub_environment(root, target, progress)
    with tempfile.TemporaryDirectory(prefix="stub-", dir=root / "build") as tmp:
        inside = Path("/build") / Path(tmp).name
        prepare_sources(Path(tmp))
        compile_gate(target, Path(tmp))
        args = write_spec(Path(tmp), inside)
        environment = [f"{name}={value}" for name, value in REPRODUCIBLE_ENV.items()]
        _run(rootfs_command(root, ["env", *environment, python, "-m", "PyInstaller", *args]),
             "PyInstaller in the emulated root")
        built = Path(tmp) / "dist" / STUB_NAME
        shutil.move(str(built), work / STUB_NAME)
    return work / STUB_NAME


def chroot_python_command(target: TargetProfile, cache_dir: Path, binds: tuple[Path, ...] = ()) -> list[str]:
    """Command prefix running the stub environment's python inside the target's root (`binds` mounted there)."""
    root = rootfs_path(target, cache_dir)
    return rootfs_command(root, [_venv_path(target) + "/bin/python"], binds)


def _venv_path(target: TargetProfile) -> str:
    pins = sorted(f"{name}=={version}" for name, version in chroot_locked_dependencies(target).items()
                  if name != "debian")
    return f"/opt/stubenv-{hashlib.sha256(chr(10).join(pins).encode()).hexdigest()[:12]}"


def ensure_rootfs(target: TargetProfile, cache_dir: Path, progress: ProgressCallback) -> Path:
    """The cached Debian root for the target, made with debootstrap on first use (minutes)."""
    root = rootfs_path(target, cache_dir)
    # PyInstaller needs the shared libpython, which Debian ships apart from python3
    packages = (*BASE_PACKAGES, f"libpython{target.python}")
    if (root / ".edgebundle-base").is_file():
        (root / "build").mkdir(exist_ok=True)
        _ensure_packages(root, packages)
        _write_cpu_topology(root)
        return root
    _require_emulation(target)
    progress("debian root (once)", 0, 2)
    with atomic_folder(root) as staging:
        _run(["debootstrap", f"--arch={DEBIAN_ARCH[target.arch]}", "--foreign", "--variant=minbase",
              f"--include={','.join(packages)}", target.debian_suite, str(staging), DEBIAN_MIRROR], "debootstrap")
        progress("debian root (once)", 1, 2)
        _run(["chroot", str(staging), "/debootstrap/debootstrap", "--second-stage"], "debootstrap second stage")
        (staging / "build").mkdir(exist_ok=True)
        (staging / ".edgebundle-base").write_text(f"{target.debian_suite} {target.arch}\n")
        (staging / ".edgebundle-packages").write_text("\n".join(packages) + "\n")
        _write_cpu_topology(staging)
    progress("debian root (once)", 2, 2)
    return root


def _write_cpu_topology(root: Path) -> None:
    """Plain files where /sys would be: onnxruntime's cpuinfo aborts without the CPU lists, and
    crashes under qemu on the host's real /sys (which describes x86 CPUs)."""
    cpu = root / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text(f"0-{(os.cpu_count() or 1) - 1}\n")


def _ensure_packages(root: Path, packages: tuple[str, ...]) -> None:
    """Install into a cached root the packages a newer recipe added since it was made."""
    record = root / ".edgebundle-packages"
    present = set(record.read_text().split()) if record.is_file() else set()
    missing = [p for p in packages if p not in present]
    if not missing:
        return
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    _run(rootfs_command(root, ["apt-get", "update", "-qq"]), "apt-get update in the emulated root")
    _run(rootfs_command(root, ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]),
         "apt-get install in the emulated root")
    record.write_text("\n".join(sorted(present | set(missing))) + "\n")


def ensure_stub_environment(root: Path, target: TargetProfile, progress: ProgressCallback) -> str:
    """A venv inside the root with the pinned runtime dependencies and PyInstaller; its python."""
    pins = sorted(f"{name}=={version}" for name, version in chroot_locked_dependencies(target).items()
                  if name != "debian")
    venv = _venv_path(target)
    if (root / venv.lstrip("/") / ".complete").is_file():
        return f"{venv}/bin/python"
    progress("stub environment (once)", 0, 1)
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # pip inside the root trusts what the host trusts (a site's TLS-inspecting proxy included)
    shutil.copyfile(HOST_CA_BUNDLE, root / CHROOT_CA_BUNDLE.lstrip("/"))
    shutil.rmtree(root / venv.lstrip("/"), ignore_errors=True)
    _run(rootfs_command(root, ["python3", "-m", "venv", venv]), "python3 -m venv in the emulated root")
    pip = [f"{venv}/bin/pip", "install", "--quiet", f"--cert={CHROOT_CA_BUNDLE}"]
    _run(rootfs_command(root, [*pip, "--upgrade", "pip==24.3.1"]), "pip upgrade in the emulated root")
    # no .pyc compilation under emulation (PyInstaller compiles what it collects) and no resolver
    _run(rootfs_command(root, [*pip, "--only-binary=:all:", "--no-deps", "--no-compile", *pins]),
         "pip install in the emulated root")
    (root / venv.lstrip("/") / ".complete").write_text("\n".join(pins) + "\n")
    progress("stub environment (once)", 1, 1)
    return f"{venv}/bin/python"


def _require_emulation(target: TargetProfile) -> None:
    if os.geteuid() != 0:
        raise BuildError(None, f"building a {target.arch} stub needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise BuildError(None, "debootstrap is not installed (apt-get install debootstrap qemu-user-static binfmt-support)")
    binfmt = QEMU_BINFMT.get(target.arch)
    if binfmt is None:
        raise BuildError(None, f"no emulator known for {target.arch}")
    if not Path("/proc/sys/fs/binfmt_misc", binfmt).exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], capture_output=True)
        subprocess.run(["update-binfmts", "--enable", binfmt], capture_output=True)
    if not Path("/proc/sys/fs/binfmt_misc", binfmt).exists():
        raise BuildError(None, f"{binfmt} is not registered with binfmt_misc (apt-get install qemu-user-static binfmt-support)")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=CHROOT_ENV)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise BuildError(None, f"{what} failed: {tail}")
