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

from bundler.cache_record import record_matches, replace_folder, write_record
from bundler.errors import BuildError
from bundler.leftovers import temp_prefix
from bundler.progress import ProgressCallback, no_progress
from targets import TargetProfile

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = REPO_ROOT / "runtime"
STUB_NAME = "edgebundle-runtime"

# What the runtime imports, and what it needs at run time (pinned for emulated builds by the target).
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "numpy", "tokenizers", "jinja2", "MarkupSafe", "PyNaCl", "cffi", "PyStemmer")

# Modules PyInstaller's analysis might reach that the runtime never uses: builder-only libraries,
# GUI toolkits, the parts of onnxruntime for training, quantization and model tooling, and
# standard modules whose shared libraries every start would unpack for nothing (TLS and OpenSSL:
# hashlib falls back to its built-in sha256; decimal; CJK codecs; readline).
EXCLUDED_MODULES = (
    "bundler", "torch", "transformers", "optimum", "onnx", "onnxscript", "onnx_ir", "scipy", "sklearn",
    "pandas", "matplotlib", "sympy", "IPython", "PIL", "pytest", "tkinter", "_tkinter", "unittest",
    "pydoc", "xmlrpc", "lib2to3", "distutils", "setuptools", "pip", "sqlite3", "curses",
    "onnxruntime.training", "onnxruntime.tools", "onnxruntime.transformers", "onnxruntime.quantization",
    "onnxruntime.backend", "onnxruntime.datasets", "coloredlogs", "humanfriendly", "huggingface_hub",
    "requests", "urllib3", "charset_normalizer", "yaml", "ssl", "_ssl", "_hashlib", "decimal", "_decimal",
    "readline", "pdb", "bz2", "_bz2", "lzma", "_lzma", "_codecs_jp", "_codecs_kr", "_codecs_cn", "_codecs_tw",
    "_codecs_hk", "_codecs_iso2022",
)

ENTRY_SCRIPT = "from runtime.cli import main\nimport sys\nsys.exit(main())\n"



# Stored uncompressed: every start unpacks these files, and inflating them is about half of the
# start-up time (docs/MEASUREMENTS.md#uncompressed-stub: 1.1 s compressed, 0.62 s not); the stub grows from ~50 MB to ~130 MB.
SPEC_TEMPLATE = """
a = Analysis([{entry!r}], pathex=[{src!r}], datas=[({web!r}, "runtime/web")],
             hiddenimports={modules!r}, excludes={excludes!r})
pyz = PYZ(a.pure)
exe = EXE(pyz, a.scripts, a.binaries, a.datas, [], name={name!r}, strip=False, upx=False, console=True,
          cdict={{kind: False for kind in ("EXTENSION", "DATA", "BINARY", "EXECUTABLE", "PYSOURCE", "PYMODULE")}})
"""


def write_spec(work: Path, build_dir: Path) -> list[str]:
    """Write the spec for sources prepared in `work`; returns PyInstaller's arguments, with paths as
    the building Python sees them (`build_dir` is `work` itself, or its path inside an emulated root)."""
    modules = sorted("runtime." + p.stem for p in (work / "src" / "runtime").glob("*.py") if p.stem != "__main__")
    (work / "stub.spec").write_text(SPEC_TEMPLATE.format(
        entry=str(build_dir / "entry.py"), src=str(build_dir / "src"), web=str(build_dir / "src" / "runtime" / "web"),
        modules=modules, excludes=list(EXCLUDED_MODULES), name=STUB_NAME,
    ))
    return ["--noconfirm", "--clean", "--log-level=WARN", f"--distpath={build_dir / 'dist'}",
            f"--workpath={build_dir / 'build'}", str(build_dir / "stub.spec")]


def runtime_source_digest() -> str:
    """Every file of runtime/ (sources and web assets), by name and content."""
    digest = hashlib.sha256()
    for path in sorted(RUNTIME_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(RUNTIME_DIR).as_posix().encode() + b"\0")
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
        "recipe": [ENTRY_SCRIPT, SPEC_TEMPLATE, list(EXCLUDED_MODULES)],
        "target": [target.os, target.arch, target.python if target.stub_builder != "host" else "",
                   target.onnxruntime if target.stub_builder != "host" else "",
                   target.stub_builder, target.debian_suite],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def build_stub(target: TargetProfile, cache_dir: Path, progress: ProgressCallback = no_progress) -> Path:
    """Path of the cached stub for `target`, building it first when the cache has none."""
    cache_dir = Path(cache_dir).resolve()
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
    if record_matches(cached.parent, key):
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    progress("runtime stub", 0, 1)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("stub"), dir=cache_dir) as tmp:
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
        write_record(staged, key)
        cached.parent.parent.mkdir(parents=True, exist_ok=True)
        replace_folder(staged, cached.parent)
    progress("runtime stub", 1, 1)
    return cached


def prepare_sources(work: Path) -> Path:
    """A copy of runtime/ (sources only) and the entry script, so the build sees no builder code."""
    src = work / "src"
    shutil.copytree(RUNTIME_DIR, src / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (work / "entry.py").write_text(ENTRY_SCRIPT)
    return src


def _build_on_host(work: Path) -> Path:
    prepare_sources(work)
    command = [sys.executable, "-m", "PyInstaller", *write_spec(work, work)]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(None, f"PyInstaller failed building the runtime stub: {_last_lines(result.stderr)}")
    return work / "dist" / STUB_NAME


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-count:])
