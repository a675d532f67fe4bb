"""Runtime stubs: a PyInstaller one-file executable of runtime/ per target, built once and cached.

A bundle is a stub plus an appended payload, so changing documents or the model never rebuilds
the stub. The cache key covers the runtime's sources, the locked runtime dependencies, the
PyInstaller recipe and the target.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bundler.errors import BuildError
from bundler.progress import ProgressCallback, no_progress
from targets import TargetProfile

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = REPO_ROOT / "runtime"
STUB_NAME = "edgebundle-runtime"

# What the runtime imports, and what it needs at run time (pinned for emulated builds by the target).
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "numpy", "tokenizers", "jinja2", "MarkupSafe", "PyNaCl", "cffi", "PyStemmer")

# Modules PyInstaller's analysis might reach that the runtime never uses: builder-only libraries,
# GUI toolkits, and the parts of onnxruntime for training, quantization and model tooling.
EXCLUDED_MODULES = (
    "bundler", "torch", "transformers", "optimum", "onnx", "onnxscript", "onnx_ir", "scipy", "sklearn",
    "pandas", "matplotlib", "sympy", "IPython", "PIL", "pytest", "tkinter", "_tkinter", "unittest",
    "pydoc", "xmlrpc", "lib2to3", "distutils", "setuptools", "pip", "sqlite3", "curses",
    "onnxruntime.training", "onnxruntime.tools", "onnxruntime.transformers", "onnxruntime.quantization",
    "onnxruntime.backend", "onnxruntime.datasets", "coloredlogs", "humanfriendly",
)

ENTRY_SCRIPT = "from runtime.cli import main\nimport sys\nsys.exit(main())\n"


def pyinstaller_arguments(work: Path, src_root: Path) -> list[str]:
    """The one recipe, used natively and inside an emulated root alike."""
    args = [
        "--onefile", "--noconfirm", "--clean", "--log-level=WARN", "--noupx",
        f"--name={STUB_NAME}",
        f"--paths={src_root}",
        f"--distpath={work / 'dist'}", f"--workpath={work / 'build'}", f"--specpath={work}",
        "--hidden-import=runtime.cli",
        "--collect-submodules=runtime",
        # The web page the server hands out (read with importlib.resources).
        f"--add-data={src_root / 'runtime' / 'web'}{os.pathsep}runtime/web",
    ]
    args += [f"--exclude-module={name}" for name in EXCLUDED_MODULES]
    return args + [str(work / "entry.py")]


def runtime_source_digest(runtime_dir: Path = RUNTIME_DIR) -> str:
    digest = hashlib.sha256()
    # Every file that goes into the stub: the sources and the web page.
    for path in sorted(p for p in runtime_dir.rglob("*") if p.is_file() and p.suffix in (".py", ".html")):
        digest.update(path.relative_to(runtime_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def host_locked_dependencies() -> dict[str, str]:
    """Versions of the runtime's distributions in the environment PyInstaller collects from."""
    versions = {}
    for name in RUNTIME_DISTRIBUTIONS + ("pyinstaller",):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def stub_key(target: TargetProfile, locked: dict[str, str]) -> str:
    recipe = {
        "runtime": runtime_source_digest(),
        "deps": locked,
        "recipe": [ENTRY_SCRIPT, list(EXCLUDED_MODULES), pyinstaller_arguments(Path("W"), Path("S"))],
        "target": [target.os, target.arch, target.python if target.stub_builder != "host" else "",
                   target.onnxruntime if target.stub_builder != "host" else "",
                   target.stub_builder, target.debian_suite],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def build_stub(target: TargetProfile, cache_dir: Path, progress: ProgressCallback = no_progress) -> Path:
    """Path of the cached stub for `target`, building it first when the cache has none."""
    if target.stub_builder == "host":
        if target.arch != platform.machine():
            raise BuildError(None, f"target {target.name} is {target.arch}; this host builds {platform.machine()} stubs")
        locked = host_locked_dependencies()
    elif target.stub_builder == "debian-chroot":
        from bundler.stub_chroot import chroot_locked_dependencies

        locked = chroot_locked_dependencies(target)
    else:
        raise BuildError(None, f"target {target.name}: unknown stub builder {target.stub_builder!r}")
    key = stub_key(target, locked)
    cached = cache_dir / f"{target.os}-{target.arch}-{key}" / STUB_NAME
    if cached.is_file():
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    progress("runtime stub", 0, 1)
    with tempfile.TemporaryDirectory(prefix="stub-", dir=cache_dir) as tmp:
        work = Path(tmp)
        if target.stub_builder == "host":
            built = _build_on_host(work)
        else:
            from bundler.stub_chroot import build_in_chroot

            built = build_in_chroot(target, work, cache_dir, progress)
        (work / "stub.json").write_text(json.dumps({"target": target.name, "deps": locked}, indent=1))
        staged = work / "result"
        staged.mkdir()
        os.replace(built, staged / STUB_NAME)
        os.replace(work / "stub.json", staged / "stub.json")
        cached.parent.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, cached.parent)
        except OSError:
            if not cached.is_file():  # another build raced us and won; otherwise a real failure
                raise
    progress("runtime stub", 1, 1)
    return cached


def prepare_sources(work: Path) -> Path:
    """A copy of runtime/ (sources only) and the entry script, so the build sees no builder code."""
    src = work / "src"
    shutil.copytree(RUNTIME_DIR, src / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (work / "entry.py").write_text(ENTRY_SCRIPT)
    return src


def _build_on_host(work: Path) -> Path:
    src = prepare_sources(work)
    command = [sys.executable, "-m", "PyInstaller", *pyinstaller_arguments(work, src)]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(None, f"PyInstaller failed building the runtime stub: {_last_lines(result.stderr)}")
    return work / "dist" / STUB_NAME


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-count:])
