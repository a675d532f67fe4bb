"""The software bill of materials of a runtime stub: every Python distribution inside it.

Read from the stub itself (the PyInstaller archive's table of contents and the module archive
inside it), not from a list of what we meant to include, so that whatever PyInstaller's
analysis pulled in is listed too. Each module is mapped to the installed distribution that
provides it; versions come from the stub's build record when it has one (stubs built in an
emulated root carry their own versions), else from this environment.
"""
from __future__ import annotations

import importlib.metadata
import json
import struct
from pathlib import Path

from bundler.errors import BuildError
from bundler.payload_writer import find_stub_cookie
from runtime.manifest import PackageLicense
from runtime.payload import PYI_COOKIE

PYTHON_LICENSE = "PSF-2.0"
BOOTLOADER_LICENSE = "GPL-2.0-or-later WITH Bootloader-exception"
_SHORT = 80


def stub_licenses(stub: Path) -> list[PackageLicense]:
    """Python itself, the PyInstaller bootloader and every distribution with modules in `stub`."""
    from PyInstaller.archive.readers import ArchiveReadError, pkg_archive_contents

    try:
        names = pkg_archive_contents(str(stub))
    except (ArchiveReadError, OSError, struct.error, ValueError) as exc:
        raise BuildError(stub, f"cannot read the runtime stub's archive: {exc}") from None
    recorded = _recorded_versions(stub)
    providers = importlib.metadata.packages_distributions()
    distributions: set[str] = set()
    for name in names:
        top = name.replace("\\", "/").split("/")[0].split(".")[0]
        for distribution in providers.get(top, ()):
            distributions.add(distribution)
    packages = [
        PackageLicense(name="Python", version=_python_version(stub), license=PYTHON_LICENSE),
        PackageLicense(name="pyinstaller-bootloader", version=recorded.get("pyinstaller") or _version("pyinstaller"),
                       license=BOOTLOADER_LICENSE),
    ]
    for distribution in sorted(distributions, key=str.lower):
        version = recorded.get(distribution) or _version(distribution)
        packages.append(PackageLicense(name=distribution, version=version, license=_license(distribution)))
    return packages


def _recorded_versions(stub: Path) -> dict[str, str]:
    record = stub.parent / "stub.json"
    if not record.is_file():
        return {}
    return dict(json.loads(record.read_text()).get("deps", {}))


def _python_version(stub: Path) -> str:
    """major.minor from the stub's archive cookie (e.g. 311 -> 3.11)."""
    _, cookie = find_stub_cookie(stub)
    python = PYI_COOKIE.unpack(cookie)[4]
    return f"{python // 100}.{python % 100}"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _license(distribution: str) -> str:
    """SPDX expression when declared, else a short License field, else the licence classifiers."""
    try:
        metadata = importlib.metadata.metadata(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    expression = metadata.get("License-Expression")
    if expression:
        return expression.strip()
    field = (metadata.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= _SHORT:
        return field
    classifiers = [c.split("::")[-1].strip() for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(classifiers) or "unknown"
