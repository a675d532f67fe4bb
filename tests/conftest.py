"""Test tiers. Markers are derived from the fixtures a test uses, so a new test lands in the right
tier without anyone remembering to mark it:

- `executable`: needs a PyInstaller runtime stub or a built executable (minutes on first use);
- `emulation`: runs an aarch64 executable under qemu (needs the emulated Debian root);
- `needs_root`: needs root (chroot for the aarch64 stub, network namespaces); skipped otherwise;
- `slow`: tests that take long for other reasons (the default 135M model, the 200-file hostile corpus,
  a whole GGUF conversion): from SLOW_FIXTURES or marked by hand.

`make test-fast` runs `-m "not executable and not emulation and not slow"`; `make test` runs all.
"""
import os
import shutil

import pytest

# Before any test module imports onnxruntime itself: importing the product turns its telemetry off.
import runtime  # noqa: F401

# aarch64 programs run through qemu-user as a Cortex-A76 (the Pi 5's core): qemu's default `max` CPU
# offers SVE/SME, which onnxruntime 1.32 picks and qemu runs ~8x slower (docs/PACKAGING.md#accuracy-level).
os.environ.setdefault("QEMU_CPU", "cortex-a76")

# Modules imported by another fixture module come first, so pytest rewrites their asserts.
pytest_plugins = [
    "tests.fixtures_model",
    "tests.fixtures_retrieval",
    "tests.fixtures_packaging",
    "tests.fixtures_station",
    "tests.fixtures_queryapp",
    "tests.fixtures_fused",
    "tests.fixtures_hardening",
]

EXECUTABLE_FIXTURES = {"host_stub", "host_bundle", "bundle_copy", "tiny_station_bundle", "default_bundle",
                       "query_executable"}
EMULATION_FIXTURES = {"aarch64_bundle", "aarch64_python", "multi_target_build"}
SLOW_FIXTURES = {"default_model_staging", "default_model_hf_dir", "default_bundle",
                 "llama32_staging",  # a 128,256-token vocabulary: the gguf reader alone takes ~30 s
                 "hostile_build"}  # 200 hostile files, each parsed in its own process: ~25 s


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    # the emulated roots are made with debootstrap and run through qemu (.ci/system-packages installs both)
    can_emulate = all(shutil.which(tool) for tool in ("qemu-aarch64-static", "debootstrap"))
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & (EXECUTABLE_FIXTURES | EMULATION_FIXTURES):
            item.add_marker(pytest.mark.executable)
        if used & EMULATION_FIXTURES:
            item.add_marker(pytest.mark.emulation)
            item.add_marker(pytest.mark.needs_root)
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("emulation") and not can_emulate:
            item.add_marker(pytest.mark.skip(reason="needs qemu-user-static and debootstrap (.ci/system-packages)"))
        if item.get_closest_marker("needs_root") and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root (chroot or network namespaces); run as root"))
