"""The runtime stub's recipe: what goes into the PyInstaller one-file executable and how it is built.

Shared by the host build (bundler/stub.py) and the emulated-root build (bundler/stub_chroot.py); every
value here is part of the stub's cache key.
"""
from __future__ import annotations

import hashlib
import posixpath
import shutil
from pathlib import Path

from bundler.stub_gate import GATE_NAME, REAL_LIBRARY
from runtime.signature import PIN_FILE, pin_slot

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = REPO_ROOT / "runtime"
STUB_NAME = "edgebundle-runtime"

# What the runtime imports, and what it needs at run time (pinned for emulated builds by the target).
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "numpy", "tokenizers", "jinja2", "MarkupSafe", "PyNaCl", "cffi", "PyStemmer",
                         "simsimd")

# Modules PyInstaller's analysis might reach that the runtime never uses: builder-only libraries,
# GUI toolkits, the parts of onnxruntime for training, quantization and model tooling, and
# standard modules whose shared libraries every start would unpack for nothing (TLS; decimal; CJK
# codecs; readline). OpenSSL's libcrypto stays: hashlib's sha256 from it is ~6x faster than the
# built-in one (SHA-NI), which `verify`, `info` and --require-signature starts spend their time in.
EXCLUDED_MODULES = (
    "bundler", "torch", "transformers", "optimum", "onnx", "onnxscript", "onnx_ir", "scipy", "sklearn",
    "pandas", "matplotlib", "sympy", "IPython", "PIL", "pytest", "tkinter", "_tkinter", "unittest",
    "pydoc", "xmlrpc", "lib2to3", "distutils", "setuptools", "pip", "sqlite3", "curses",
    "onnxruntime.training", "onnxruntime.tools", "onnxruntime.transformers", "onnxruntime.quantization",
    "onnxruntime.backend", "onnxruntime.datasets", "coloredlogs", "humanfriendly", "huggingface_hub",
    "requests", "urllib3", "charset_normalizer", "yaml", "ssl", "_ssl", "decimal", "_decimal",
    "readline", "pdb", "bz2", "_bz2", "lzma", "_lzma", "_codecs_jp", "_codecs_kr", "_codecs_cn", "_codecs_tw",
    "_codecs_hk", "_codecs_iso2022",
    # Never loaded by any command (strace of the unpacked files and -X importtime of info, verify, search,
    # ask, summarize, chat and serve; docs/PACKAGING.md#what-the-runtime-never-loads).
    # numpy.fft stays: numpy 1.26 (the aarch64 stubs) imports it with numpy.
    "asyncio", "_asyncio", "numpy.f2py", "numpy.testing", "numpy._core._multiarray_tests",
    "doctest", "psutil", "threadpoolctl", "ftplib", "tracemalloc",
)

ENTRY_SCRIPT = "from runtime.cli import main\nimport sys\nsys.exit(main())\n"

# PyNaCl's compiled module imports cffi's backend from C, where PyInstaller's analysis cannot see it.
HIDDEN_IMPORTS = ["_cffi_backend"]

# PyInstaller's reproducibility settings: the marshalled frozenset constants of `x in {...}` follow
# the string hash seed, and a fixed SOURCE_DATE_EPOCH leaves no build time in anything it stamps.
REPRODUCIBLE_ENV = {"PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": "315532800"}



# Stored uncompressed, for every target: every start unpacks these files, and inflating them doubles the
# start's CPU time on x86_64 and costs ~1.5-2 s more under aarch64 emulation (docs/MEASUREMENTS.md#uncompressed-stub);
# the stub grows from ~39 MB to ~108 MB.
# Shared libraries are stripped of their symbols one by one (libpython alone: 23 MB -> 6 MB), except
# the libraries vendored into a wheel's `*.libs/` folder (numpy's OpenBLAS stops loading when stripped,
# which is why PyInstaller's own all-or-nothing `strip` stays off); a library strip refuses is kept as is.
SPEC_TEMPLATE = """
import os, shutil, subprocess

def stripped(binaries, folder):
    os.makedirs(folder, exist_ok=True)
    kept = []
    for dest, src, kind in binaries:
        if kind in ("BINARY", "EXTENSION") and ".libs/" not in dest.replace(os.sep, "/"):
            copy = os.path.join(folder, dest.replace("/", "__"))
            shutil.copyfile(src, copy)
            if subprocess.run(["strip", "--strip-unneeded", copy], capture_output=True).returncode == 0:
                src = copy
        kept.append((dest, src, kind))
    return kept

def gated(binaries, gate, real_name):
    # the glibc gate takes libpython's name, the real libpython lies beside it (bundler/stub_gate.py)
    python = [entry for entry in binaries if os.path.basename(entry[0]).startswith("libpython")]
    if len(python) != 1:
        raise SystemExit("expected one libpython among the binaries, found %r" % (python,))
    dest, src, kind = python[0]
    rest = [entry for entry in binaries if entry is not python[0]]
    return rest + [(dest, gate, kind), (os.path.join(os.path.dirname(dest), real_name), src, kind)]

# numpy's licence texts (its own and those of the libraries its wheel vendors) ship with its binaries;
# PyInstaller collected them only as a side effect of numpy modules the runtime never loads.
from PyInstaller.utils.hooks import copy_metadata
a = Analysis([{entry!r}], pathex=[{src!r}],
             datas=[({web!r}, "runtime/web"), ({pin!r}, {pin_folder!r})] + copy_metadata("numpy"),
             hiddenimports={modules!r}, excludes={excludes!r})
a.binaries = gated(stripped(a.binaries, {stripped_dir!r}), {gate!r}, {real_library!r})
pyz = PYZ(a.pure)
exe = EXE(pyz, a.scripts, a.binaries, a.datas, [], name={name!r}, strip=False, upx=False, console=True,
          cdict={{kind: False for kind in ("EXTENSION", "DATA", "BINARY", "EXECUTABLE", "PYSOURCE", "PYMODULE")}})
"""


def write_spec(work: Path, build_dir: Path) -> list[str]:
    """Write the spec for sources prepared in `work` (with the glibc gate compiled there); returns PyInstaller's
    arguments, with paths as the building Python sees them (`build_dir` is `work` itself, or its path inside an
    emulated root)."""
    modules = sorted("runtime." + p.stem for p in (work / "src" / "runtime").glob("*.py") if p.stem != "__main__")
    modules += HIDDEN_IMPORTS
    # an empty pinned-key slot, stored uncompressed so that a signature-requiring build can fill it in
    pin_folder, pin_name = posixpath.split(PIN_FILE)
    (work / pin_name).write_bytes(pin_slot(None))
    (work / "stub.spec").write_text(SPEC_TEMPLATE.format(
        entry=str(build_dir / "entry.py"), src=str(build_dir / "src"), web=str(build_dir / "src" / "runtime" / "web"),
        pin=str(build_dir / pin_name), pin_folder=pin_folder, modules=modules, excludes=list(EXCLUDED_MODULES),
        name=STUB_NAME, stripped_dir=str(build_dir / "stripped"), gate=str(build_dir / GATE_NAME),
        real_library=REAL_LIBRARY,
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


def prepare_sources(work: Path) -> Path:
    """A copy of runtime/ (sources only) and the entry script, so the build sees no builder code."""
    src = work / "src"
    shutil.copytree(RUNTIME_DIR, src / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (work / "entry.py").write_text(ENTRY_SCRIPT)
    return src
