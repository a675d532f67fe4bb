import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_record  # noqa: E402
from bench_record import BenchRecord  # noqa: E402


def test_bench_figures_are_written_with_cpu_and_load_and_a_busy_run_is_flagged(tmp_path, monkeypatch, capsys):
    loads = iter([0.2, 3.5, 0.4] + [0.4] * 100)
    monkeypatch.setattr(bench_record.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(bench_record, "SAMPLE_SECONDS", 0.01)
    out = tmp_path / "x.json"
    with BenchRecord("x", {"threads": 2}, out=out) as record:
        record.figures["decode_tok_s"] = 41.5
        while not any(load > 1 for load in record._loads):
            pass
    written = json.loads(out.read_text())
    assert written["figures"] == {"decode_tok_s": 41.5}
    assert written["settings"] == {"threads": 2}
    assert written["machine"]["load_average"]["max"] == 3.5
    assert written["machine"]["cores"] >= 1 and written["machine"]["cpu"]
    assert "load average reached 3.50" in capsys.readouterr().err


def test_a_quiet_run_writes_no_warning_and_a_failed_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_record.os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    with BenchRecord("quiet", out=tmp_path / "quiet.json"):
        pass
    assert "warning" not in capsys.readouterr().err
    try:
        with BenchRecord("failed", out=tmp_path / "failed.json"):
            raise RuntimeError("bench broke")
    except RuntimeError:
        pass
    assert not (tmp_path / "failed.json").exists()
