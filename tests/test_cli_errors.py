"""Every command of the executable and of build.py answers a mistake with one `error:` line and
its documented exit code (runtime/errors.py), never a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import build
from runtime import cli, layout
from runtime.errors import EXIT_USER_ERROR

BAD_ARGUMENTS = [
    ["search", "pump", "--mode", "foo"],
    ["search", "pump", "--k", "0"],
    ["ask", "why?", "--k", "-1"],
    ["ask", "why?", "--mode", "vector"],
    ["ask", "why?", "--top-p", "2"],
    ["ask", "why?", "--temperature", "nan"],
    ["ask", "why?", "--max-tokens", "0"],
    ["ask", "why?", "--threads", "0"],
    ["chat", "--ctx", "-5"],
    ["serve", "--port", "70000"],
    ["serve", "--queue-timeout", "0"],
    ["info", "--no-such-option"],
    ["verify", "--pubkey"],
    ["apply-patch"],
    ["apply-patch", "update.patch"],                    # no -o NEW
    ["apply-patch", "update.patch", "-o", "new"],       # a staging folder has no file to patch
    ["no-such-command"],
]


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, [line for line in captured.err.splitlines() if "error:" in line]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda argv: " ".join(argv))
def test_bad_arguments_to_every_command_give_one_error_line_and_exit_2(query_staging, argv, capsys):
    code, errors = run_cli(["--bundle", str(query_staging), *argv], capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1, errors


@pytest.fixture
def damaged_staging(query_staging, tmp_path) -> Path:
    copy = tmp_path / "staging"
    shutil.copytree(query_staging, copy)
    return copy


def test_malformed_index_settings_are_one_error_naming_the_entry(damaged_staging, capsys):
    (damaged_staging / layout.SETTINGS).write_text('{"modes": "bm25"')
    code, errors = run_cli(["--bundle", str(damaged_staging), "search", "pump"], capsys)
    assert code == EXIT_USER_ERROR
    assert errors == [errors[0]] and layout.SETTINGS in errors[0] and "malformed" in errors[0]


def test_index_settings_with_an_unknown_mode_are_refused(damaged_staging, capsys):
    settings = json.loads((damaged_staging / layout.SETTINGS).read_text())
    settings["modes"] = ["bm25", "telepathy"]
    (damaged_staging / layout.SETTINGS).write_text(json.dumps(settings))
    code, errors = run_cli(["--bundle", str(damaged_staging), "search", "pump"], capsys)
    assert code == EXIT_USER_ERROR and "telepathy" in errors[0]


def test_unknown_graph_kind_in_the_manifest_is_one_error(damaged_staging, capsys):
    manifest = json.loads((damaged_staging / "manifest.json").read_text())
    manifest["model"]["graph"] = "mystery"
    (damaged_staging / "manifest.json").write_text(json.dumps(manifest))
    code, errors = run_cli(["--bundle", str(damaged_staging), "ask", "How is the pump primed?"], capsys)
    assert code == EXIT_USER_ERROR
    assert len(errors) == 1 and "mystery" in errors[0] and "supported" in errors[0]


def test_a_question_longer_than_the_context_is_one_error(query_staging, capsys):
    code, errors = run_cli(["--bundle", str(query_staging), "ask", "pump " * 3000, "--ctx", "64"], capsys)
    assert code == EXIT_USER_ERROR and len(errors) == 1


def test_missing_bundle_is_one_error(tmp_path, capsys):
    code, errors = run_cli(["--bundle", str(tmp_path / "nothing"), "info"], capsys)
    assert code == EXIT_USER_ERROR and len(errors) == 1 and "nothing" in errors[0]


@pytest.mark.parametrize("argv", [
    ["--model", "/no/such/model.gguf"],
    ["--docs", "/no/such/docs"],
    ["--target", "toaster"],
    ["--quantization", "int3"],
    ["--max-ppl-ratio", "0.5"],
    ["--sign-key", "/no/such/key"],
], ids=lambda argv: " ".join(argv))
def test_bad_arguments_to_the_builder_give_one_error_line_and_exit_2(argv, tmp_path, capsys):
    assert_one_error_line_and_nothing_written(
        [*argv, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")], tmp_path / "out", capsys)


def assert_one_error_line_and_nothing_written(argv, out, capsys):
    try:
        code = build.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code == EXIT_USER_ERROR
    assert len([line for line in captured.err.splitlines() if "error:" in line]) == 1, captured.err
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["update"],
    ["update", "/no/such/bundle", "--docs", "/no/such/docs"],
    ["update", "/no/such/bundle", "--docs", "/no/such/docs", "--sign-key", "/no/such/key"],
    ["patch", "/no/such/old"],
    ["patch", "/no/such/old", "/no/such/new"],
    ["patch", "--ratio", "1"],
], ids=lambda argv: " ".join(argv))
def test_bad_arguments_to_update_and_patch_give_one_error_line_and_exit_2(argv, tmp_path, capsys):
    assert_one_error_line_and_nothing_written([*argv, "-o", str(tmp_path / "out")], tmp_path / "out", capsys)


def test_update_of_a_file_that_is_not_a_bundle_names_it(tmp_path, capsys):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a bundle")
    code = build.main(["update", str(bogus), "--docs", str(tmp_path), "-o", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == EXIT_USER_ERROR and errors == [f"error: {bogus}: no payload trailer (not a bundle, or truncated)"]
    assert not (tmp_path / "out").exists()
