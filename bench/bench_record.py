"""One benchmark run's figures, written as JSON with the machine's state beside them.

Ratios measured on a busy machine are not comparable (a llama.cpp row once fell to 5.7 tok/s under a
load average of ~3), so every run samples the load average while it runs, records the CPU model and
core count, and warns on stderr when the load average passed 1.0.

    with BenchRecord("fused", vars(args)) as record:
        ...
        record.figures["decode_tok_s"] = 41.2

writes bench/results/fused.json (or the path given as `out`) when the block ends without an error.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Every benchmark imports this module first: importing the product here turns onnxruntime's telemetry
# off (runtime/__init__.py) before any benchmark imports onnxruntime itself.
import runtime  # noqa: E402,F401

RESULTS = Path(__file__).resolve().parent / "results"
BUSY_LOAD = 1.0
SAMPLE_SECONDS = 2.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


class BenchRecord:
    def __init__(self, name: str, settings: dict | None = None, out: Path | None = None):
        self.name = name
        self.settings = dict(settings or {})
        self.out = Path(out) if out else RESULTS / f"{name}.json"
        self.figures: dict = {}
        self._loads: list[float] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._started = 0.0

    def _sample(self) -> None:
        while True:
            self._loads.append(os.getloadavg()[0])
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __enter__(self) -> "BenchRecord":
        self._started = time.time()
        self._sampler.start()
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._stop.set()
        self._sampler.join()
        self._loads.append(os.getloadavg()[0])
        if kind is not None:
            return
        busiest = max(self._loads)
        record = {
            "bench": self.name,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started)),
            "seconds": round(time.time() - self._started, 1),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "load_average": {"start": self._loads[0], "max": busiest, "end": self._loads[-1]}},
            "commit": git_commit(),
            "settings": _jsonable(self.settings),
            "figures": _jsonable(self.figures),
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        part = self.out.with_name(self.out.name + ".part")
        part.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(part, self.out)
        print(f"figures written to {self.out}", file=sys.stderr)
        if busiest > BUSY_LOAD:
            print(f"warning: the load average reached {busiest:.2f} during this run (over {BUSY_LOAD}): "
                  "figures and ratios are not comparable with a run on an idle machine", file=sys.stderr)
