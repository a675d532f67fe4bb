"""Keeps the warnings, log lines and progress bars of torch/transformers/optimum out of the builder's output."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator

NOISY_LOGGERS = ("optimum", "transformers", "torch.onnx", "onnxruntime")


@contextlib.contextmanager
def silence_third_party() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # transformers' GGUF loader draws a tqdm bar on stderr that no setting turns off
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
