"""Keeps known, harmless messages of torch/transformers/optimum out of the builder's output.

Only messages listed here are dropped, each with the reason it is harmless; any other warning
still reaches the user. The builder shows its own progress instead (build.py's progress bars).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Iterator

NOISY_LOGGERS = ("optimum", "transformers", "torch.onnx", "onnxruntime")

HARMLESS_LOG_MESSAGES = tuple(re.compile(pattern) for pattern in (
    # optimum-onnx 0.1.0 passes transformers 4.57 the old keyword; the dtype it asks for is used.
    r"^`torch_dtype` is deprecated",
    # The embedder is exported at opset 17 on purpose: the oldest onnxruntime a target runs (1.19) and a
    # fixed recipe keep its vectors unchanged; optimum's advice is generic.
    r"^Opset \d+ is lower than the recommended minimum opset",
))
HARMLESS_WARNINGS = (
    # transformers builds its attention mask from constants while tracing; the traced graph is
    # checked against PyTorch by the exporter's validation and by tests/test_retrieval.py.
    r"torch\.tensor results are registered as constants in the trace",
    # the exported graphs have fixed control flow for the shapes they serve; the same validation holds
    r"Converting a tensor to a Python (boolean|integer|float|index) might cause the trace to be incorrect",
    r"Iterating over a tensor might cause the trace to be incorrect",
)
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm bar's frame: "Loading: 40%|████  | 2/5"


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in HARMLESS_LOG_MESSAGES)


@contextlib.contextmanager
def known_noise_silenced() -> Iterator[None]:
    """Drop the listed messages while the block runs, wherever they are logged or warned."""
    handlers = {handler for name in ("", *NOISY_LOGGERS) for handler in logging.getLogger(name).handlers}
    try:
        from transformers.utils import logging as hf_logging

        handlers.update(hf_logging.get_logger().handlers)
    except ImportError:
        pass
    handlers.add(logging.lastResort)
    handlers.discard(None)
    dropper = _DropHarmless()
    for handler in handlers:
        handler.addFilter(dropper)
    try:
        with warnings.catch_warnings():
            for pattern in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(dropper)


@contextlib.contextmanager
def silence_third_party() -> Iterator[None]:
    """Around model conversion and export: library logging at error level, no library progress bars."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    captured = io.StringIO()
    try:
        # transformers' GGUF loader draws a tqdm bar on stderr that no setting turns off
        with known_noise_silenced(), contextlib.redirect_stderr(captured):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        _pass_on(captured.getvalue())


def _pass_on(text: str) -> None:
    """Whatever else the libraries wrote to stderr is a real message: log it (the CLI shows warnings)."""
    log = logging.getLogger("bundler")
    for line in re.split(r"[\r\n]+", text):
        line = line.strip()
        known = any(p.search(line) for p in HARMLESS_LOG_MESSAGES) or any(re.search(p, line) for p in HARMLESS_WARNINGS)
        if line and not known and not PROGRESS_BAR.search(line):
            log.warning(line)
