"""Quality gate: the exported model's perplexity against its source model's on one text.

The source is scored in PyTorch with its float weights (a GGUF's dequantized exactly), the
export through its own ONNX graph; the bundle is refused when the ratio is over the limit.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bundler.errors import BuildError
from bundler.progress import ProgressCallback, no_progress
from runtime.manifest import QualityReport

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "quality_sample.txt"
DEFAULT_MAX_RATIO = 1.05
MAX_TOKENS = 1024
STEP = "quality gate"


ROWS_PER_CHUNK = 64  # float64 copies of 64 rows, not of 1,024 x 128,256 logits (3 GB)


def perplexity_from_logits(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean negative log-likelihood of ids[1:] given logits rows [:-1])."""
    targets = np.asarray(ids[1:])
    total = 0.0
    for start in range(0, len(targets), ROWS_PER_CHUNK):
        rows = logits[start:min(start + ROWS_PER_CHUNK, len(targets))].astype(np.float64)
        rows -= rows.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(rows).sum(axis=-1))
        total += float(np.sum(log_norm - rows[np.arange(len(rows)), targets[start:start + len(rows)]]))
    return float(math.exp(total / len(targets)))


def check_quality(staging_model_dir: str | Path, source: str | Path, text: Optional[str | Path] = None,
                  max_ratio: float = DEFAULT_MAX_RATIO,
                  decoder_factory: Optional[Callable[[Path, int], object]] = None,
                  progress: ProgressCallback = no_progress) -> QualityReport:
    """Measure both perplexities on `text` (a file; the built-in sample by default).

    `decoder_factory(model_dir, max_length)` opens the exported model; the fused decoder by
    default. Progress counts the export's forward pass as one unit and each reference layer as one.
    Raises BuildError naming both figures when the ratio exceeds `max_ratio`.
    """
    from tokenizers import Tokenizer

    from bundler.llama_weights import load_llama
    from bundler.torch_reference import reference_logits

    model_dir = Path(staging_model_dir)
    text_path = Path(text) if text is not None else DEFAULT_TEXT
    try:
        content = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(text_path, f"cannot read quality text ({exc})") from None
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise BuildError(tokenizer_path, "missing: the quality gate needs the model's tokenizer")
    ids = Tokenizer.from_file(str(tokenizer_path)).encode(content, add_special_tokens=False).ids[:MAX_TOKENS]
    if len(ids) < 16:
        raise BuildError(text_path, f"quality text has only {len(ids)} tokens (needs at least 16)")

    if decoder_factory is None:
        from runtime.fused_decoder import FusedDecoder

        decoder_factory = lambda path, length: FusedDecoder.from_model_dir(path, threads=None, max_length=length)
    # One model in memory at a time: the export's session is released before the reference runs.
    source_weights = load_llama(source)
    steps = 1 + source_weights.spec.num_layers
    progress(STEP, 0, steps)
    decoder = decoder_factory(model_dir, len(ids))
    bundle_ppl = perplexity_from_logits(decoder.forward(ids), ids)
    del decoder
    progress(STEP, 1, steps)
    logits = reference_logits(source_weights, ids, lambda layer: progress(STEP, 1 + layer, steps))
    source_ppl = perplexity_from_logits(logits, ids)
    ratio = bundle_ppl / source_ppl
    report = QualityReport(text=str(text_path) if text is not None else "built-in sample", tokens=len(ids),
                           source_ppl=round(source_ppl, 4), bundle_ppl=round(bundle_ppl, 4),
                           ratio=round(ratio, 4), max_ratio=max_ratio)
    enforce_quality(report, model_dir)
    return report


def enforce_quality(report: QualityReport, model_dir: str | Path) -> None:
    """Refuse the model when its perplexity ratio exceeds the report's limit."""
    if not report.ratio <= report.max_ratio:
        raise BuildError(model_dir, f"quality gate failed: perplexity {report.bundle_ppl:.3f} against the "
                                    f"source's {report.source_ppl:.3f} (ratio {report.ratio:.3f} > {report.max_ratio})")
