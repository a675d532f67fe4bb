"""Fused room: exact GGUF transfer, fused graph vs PyTorch, quality gate, lossless speculation."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bundler.errors import BuildError
from bundler.fused_export import build_fused_model, save_model
from bundler.fused_graph import QuantizationPlan, build_graph, effective_weights
from bundler.gguf_reader import read_gguf
from bundler.llama_weights import load_llama
from bundler.quality_gate import check_quality
from bundler.torch_reference import reference_logits
from runtime.bundle import Bundle
from runtime.decoder import load_decoder
from runtime.fused_decoder import FusedDecoder
from runtime.generation import GenerationConfig, generate, prefill
from runtime.repetition import SPACING, RepetitionGuard
from runtime.speculative import SpeculationStats, reference_greedy, speculative_greedy
from tests.fixtures_model import write_model_info
from tests.onnx_weights import graph_weights

PROMPT = [int(i) for i in np.random.default_rng(7).integers(0, 49152, 48)]
# (source, plan, tolerance on logits relative to their largest magnitude). fp32 is exact math;
# the others compare with PyTorch running the very weights the graph holds, so the only
# difference is MatMulNBits quantizing activations to int8 (accuracy level 4).
COMBINATIONS = [
    ("hf", QuantizationPlan("fp32"), 1e-4),
    ("hf", QuantizationPlan("int8"), 0.05),
    ("hf", QuantizationPlan("int4", 32, "rtn"), 0.05),
    ("hf", QuantizationPlan("int4", 16, "kquant"), 0.05),
    ("hf", QuantizationPlan("int4", 64, "rtn"), 0.05),
    ("gguf", QuantizationPlan("fp32"), 1e-4),
    ("gguf", QuantizationPlan("gguf-exact"), 0.05),
    ("gguf", QuantizationPlan("int4", 32, "kquant"), 0.05),
]


@pytest.fixture(scope="session")
def fused_models(tmp_path_factory, tiny_llama_dir, tiny_gguf):
    """(source kind, plan label) -> model folder holding model.onnx; built on first use."""
    root = tmp_path_factory.mktemp("fused")
    built = {}

    def get(kind: str, plan: QuantizationPlan):
        key = (kind, plan.label)
        if key not in built:
            folder = root / f"{kind}-{plan.label}"
            folder.mkdir()
            weights = load_llama(tiny_llama_dir if kind == "hf" else tiny_gguf)
            save_model(build_graph(weights, plan), folder)
            built[key] = folder
        return built[key]

    return get


@pytest.mark.parametrize("kind,plan,tolerance", COMBINATIONS, ids=[f"{k}-{p.label}" for k, p, _ in COMBINATIONS])
def test_fused_graph_matches_pytorch_with_and_without_kv_cache(fused_models, tiny_llama_dir, tiny_gguf,
                                                               kind, plan, tolerance):
    weights = load_llama(tiny_llama_dir if kind == "hf" else tiny_gguf)
    expected = reference_logits(effective_weights(weights, plan), PROMPT)
    scale = np.abs(expected).max()
    decoder = FusedDecoder.from_model_dir(fused_models(kind, plan), threads=2, max_length=64)

    whole = decoder.forward(PROMPT)
    assert np.abs(whole - expected).max() <= tolerance * scale

    decoder.reset()
    steps = [decoder.forward(PROMPT[:30])] + [decoder.forward(PROMPT[i:i + 3]) for i in range(30, 36, 3)]
    steps += [decoder.forward([token]) for token in PROMPT[36:]]
    assert np.abs(np.concatenate(steps) - expected).max() <= tolerance * scale

    decoder.truncate(20)
    assert np.abs(decoder.forward(PROMPT[20:], rows=2) - expected[-2:]).max() <= tolerance * scale


def test_gguf_exact_weights_dequantize_bit_for_bit_to_gguf(fused_models, tiny_gguf):
    model = onnx.load(str(fused_models("gguf", QuantizationPlan("gguf-exact")) / "model.onnx"))
    gguf = read_gguf(tiny_gguf)
    weights = load_llama(tiny_gguf)

    def expect(name: str) -> np.ndarray:
        return weights.tensors[name].dequantize()

    expected = []
    for layer in range(weights.spec.num_layers):
        p = f"model.layers.{layer}."
        expected += [
            np.concatenate([expect(p + f"self_attn.{x}_proj.weight") for x in "qkv"]),
            expect(p + "self_attn.o_proj.weight"),
            np.concatenate([expect(p + "mlp.gate_proj.weight"), expect(p + "mlp.up_proj.weight")]),
            expect(p + "mlp.down_proj.weight"),
        ]
    expected.append(gguf.tensors["token_embd.weight"].dequantize())  # the tied lm_head

    found, table = graph_weights(model)
    assert len(found) == len(expected)
    for got, want in zip(found, expected):
        assert np.array_equal(got, want)
    assert np.array_equal(table, gguf.tensors["token_embd.weight"].dequantize())


def test_gguf_q_and_k_rows_are_unpermuted_from_llama_cpp_order(tiny_gguf, tiny_llama_dir):
    from_gguf = load_llama(tiny_gguf)
    original = load_llama(tiny_llama_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    # Q4_1 is lossy; the right row order is the one that lands closest to the source rows.
    error = np.abs(from_gguf.float(name) - original.float(name)).mean()
    assert error < 0.2 * np.abs(original.float(name)).mean()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_gguf_is_refused_with_a_clear_error(tmp_path, tiny_gguf, damage):
    data = tiny_gguf.read_bytes()
    path = tmp_path / f"{damage}.gguf"
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(BuildError) as error:
        build_fused_model(path, "gguf-exact", tmp_path / "out")
    assert str(path) in str(error.value)
    assert not (tmp_path / "out" / "model" / "model.onnx").exists()


def test_gguf_exact_is_refused_for_a_float_source(tmp_path, tiny_llama_dir):
    with pytest.raises(BuildError, match="gguf-exact needs a GGUF source"):
        build_fused_model(tiny_llama_dir, "gguf-exact", tmp_path)


@pytest.fixture(scope="session")
def gguf_staging(tmp_path_factory, tiny_gguf):
    """Staging folder built end to end from the tiny GGUF (graph, tokenizer, manifest)."""
    staging = tmp_path_factory.mktemp("gguf-staging")
    info = build_fused_model(tiny_gguf, "gguf-exact", staging)
    write_model_info(staging, info)
    return staging


def test_bundle_of_a_fused_model_opens_with_the_fused_decoder(gguf_staging):
    bundle = Bundle.open(gguf_staging)
    assert bundle.model.graph == "fused-gqa"
    assert bundle.model.quantization == "gguf-exact"
    decoder = load_decoder(bundle, threads=2, max_length=128)
    assert isinstance(decoder, FusedDecoder) and decoder.max_length == 128
    assert (gguf_staging / "model" / "tokenizer.json").is_file()


def test_info_names_the_model_and_how_its_gguf_types_were_carried(gguf_staging, tiny_gguf, tmp_path, capsys):
    from bundler.pipeline import write_manifest
    from runtime.cli import main
    from runtime.manifest import IndexInfo

    staging = tmp_path / "staging"  # a staging folder as the build writes it, with no documents
    shutil.copytree(gguf_staging / "model", staging / "model")
    write_manifest(staging, Bundle.open(gguf_staging).model, "host", IndexInfo(documents=0, chunks=0))
    assert main(["--bundle", str(staging), "info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # No general.basename in this file: the file name, never general.name.
    assert lines[0].startswith(f"model:         {tiny_gguf.stem} (llama, ")
    assert "weights:       exact GGUF blocks (bit for bit): Q4_1 x10, Q8_0 x3, Q4_0 x2" in lines


def test_quality_gate_passes_the_exact_export_and_reports_both_perplexities(gguf_staging, tiny_gguf):
    report = check_quality(gguf_staging / "model", tiny_gguf)
    assert report.tokens > 100 and report.ratio <= 1.05
    assert report.ratio == pytest.approx(report.bundle_ppl / report.source_ppl, rel=1e-3)


def test_quality_gate_refuses_a_damaged_model_naming_both_figures(tmp_path, gguf_staging, tiny_gguf):
    damaged = tmp_path / "model"
    shutil.copytree(gguf_staging / "model", damaged)
    model = onnx.load(str(damaged / "model.onnx"))
    lm_head = next(node for node in model.graph.node if node.output[0] == "logits")
    for tensor in model.graph.initializer:
        if tensor.name == lm_head.input[2]:  # the tied lm_head's scales
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 4, tensor.name))
    save_model(model, damaged)
    with pytest.raises(BuildError, match=r"perplexity [\d.]+ against the source's [\d.]+"):
        check_quality(damaged, tiny_gguf)


def _prompts() -> list[list[int]]:
    """Prompts with repeated passages (drafts found) and without (no draft anywhere)."""
    rng = np.random.default_rng(3)
    prompts = []
    for i in range(24):
        passage = [int(t) for t in rng.integers(0, 49152, 24)]
        if i % 3 == 0:
            prompts.append([int(t) for t in rng.integers(0, 49152, 40)])
        else:
            prompts.append(passage + [int(t) for t in rng.integers(0, 49152, 8)] + passage[:6])
    return prompts


def test_speculative_greedy_is_identical_to_plain_greedy_on_the_same_numeric_path(fused_models):
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 256)
    stats = SpeculationStats()
    for prompt in _prompts():
        plain = list(reference_greedy(decoder, int(np.argmax(prefill(decoder, prompt))), 40))
        # Quoting the model's own continuation makes drafts that are accepted, then rejected.
        quoted = prompt + plain[:20] + prompt[:5]
        for ids in (prompt, quoted):
            expected = list(reference_greedy(decoder, int(np.argmax(prefill(decoder, ids))), 40))
            fast = list(speculative_greedy(decoder, ids, int(np.argmax(prefill(decoder, ids))), 40, stats=stats))
            assert fast == expected
    assert stats.accepted > 50
    assert stats.drafted - stats.accepted > 50
    assert stats.steps > stats.drafted // 3  # some steps found no draft


def test_speculative_greedy_with_the_repetition_guard_is_identical_to_plain_greedy(fused_models):
    """The tiny random model loops at once: the penalty changes the output, the hard stop ends
    loops (alone it fires; with the penalty there are fewer loops), and the verifier replays
    every decision exactly."""
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 256)
    changed = stopped = 0
    stats = SpeculationStats()
    for number, prompt in enumerate(_prompts()):
        unguarded = list(reference_greedy(decoder, int(np.argmax(prefill(decoder, prompt))), 60))
        settings = (0.8, 1.75, 2) if number % 2 else (0.0, 1.75, 2)
        runs = []
        for run in (reference_greedy, speculative_greedy):
            guard = RepetitionGuard(*settings, loop_ngram=4, loop_repeats=3)
            first = int(np.argmax(guard.adjust(prefill(decoder, prompt))))
            if run is reference_greedy:
                runs.append(list(run(decoder, first, 60, guard=guard)))
                stopped += guard.stopped
            else:
                runs.append(list(run(decoder, prompt, first, 60, guard=guard, stats=stats)))
        assert runs[0] == runs[1]
        changed += runs[0] != unguarded
    assert changed > 5
    assert stopped > 0
    assert stats.accepted > 20


def _quoting_prompts() -> list[list[int]]:
    """Random passages, with the answer's likely start quoting them so the bias has spans to extend."""
    rng = np.random.default_rng(11)
    prompts = []
    for _ in range(12):
        passage = [int(t) for t in rng.integers(0, 49152, 32)]
        prompts.append(passage + [int(t) for t in rng.integers(0, 49152, 8)] + passage[:5])
    return prompts


def test_speculative_greedy_with_copy_bias_is_identical_to_step_by_step(fused_models):
    """The tiny random model's output changes with the bias (it quotes its prompt more), and the
    speculative path, whose drafts come from the same prompt, makes exactly the same choices."""
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 256)
    stats = SpeculationStats()
    changed = 0
    for number, prompt in enumerate(_quoting_prompts()):
        plain = list(reference_greedy(decoder, int(np.argmax(prefill(decoder, prompt))), 40))
        config = GenerationConfig(copy_bonus=3.0, copy_min_match=1 + number % 2,
                                  dry_multiplier=0.8 if number % 3 else 0.0,
                                  copy_focus=1, copy_focus_bonus=2.0 if number % 2 else 0.0)
        focus = [prompt[8:20]]  # a "sentence" of the passage that the answer is pushed to open with
        runs = []
        for run in (reference_greedy, speculative_greedy):
            guard = RepetitionGuard.from_config(config, [prompt], focus)
            first = int(np.argmax(guard.adjust(prefill(decoder, prompt))))
            if run is reference_greedy:
                runs.append(list(run(decoder, first, 40, guard=guard)))
            else:
                runs.append(list(run(decoder, prompt, first, 40, guard=guard, stats=stats)))
        assert runs[0] == runs[1]
        changed += runs[0] != plain
        assert list(generate(decoder, prompt, GenerationConfig(**{**vars(config), "max_new_tokens": 40}),
                             RepetitionGuard.from_config(config, [prompt], focus))) == runs[0]
    assert changed > 3
    assert stats.accepted > 10  # drafts verified past their first row, where the bias sees pending tokens


def _stops_alike_on_both_paths(decoder, config: GenerationConfig, **guard_tables) -> int:
    """Greedy step by step and speculative, each with a fresh guard, give the same tokens for every
    quoting prompt; returns how many of the step-by-step runs the guard stopped."""
    stopped = 0
    for prompt in _quoting_prompts():
        runs = []
        for run in (reference_greedy, speculative_greedy):
            guard = RepetitionGuard.from_config(config, [prompt], **guard_tables)
            first = int(np.argmax(guard.adjust(prefill(decoder, prompt))))
            if run is reference_greedy:
                runs.append(list(run(decoder, first, 60, guard=guard)))
                stopped += guard.stopped
            else:
                runs.append(list(run(decoder, prompt, first, 60, guard=guard)))
        assert runs[0] == runs[1]
    return stopped


def test_speculative_greedy_with_the_counting_stop_is_identical_to_step_by_step(fused_models):
    """Every even token id is taken as a "number" and the copy bias makes the tiny model quote its
    random passage: folded, the quote's n-grams of numbers and other tokens come back, so the
    counting stop fires, at the same token on both paths."""
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 256)
    config = GenerationConfig(loop_ngram=4, loop_repeats=0, loop_number_repeats=2, dry_multiplier=0.0,
                              copy_bonus=3.0, copy_focus_bonus=0.0)
    assert _stops_alike_on_both_paths(decoder, config, number_tokens=frozenset(range(0, 49152, 2))) > 0


def test_speculative_greedy_with_the_loop_stop_on_words_is_identical_to_step_by_step(fused_models):
    """Words folded hard (every token id to one of 50 words, every 11th a line break) make the
    loop stop fire on text whose tokens never repeat: at the same token on both paths."""
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 256)
    word_ids = np.arange(49152) % 50
    word_ids[::11] = SPACING
    config = GenerationConfig(loop_ngram=3, loop_repeats=2, loop_number_repeats=0, dry_multiplier=0.0,
                              copy_bonus=3.0, copy_focus_bonus=0.0)
    assert _stops_alike_on_both_paths(decoder, config, word_ids=word_ids) > 0


def test_generate_takes_the_speculative_path_and_stops_at_stop_tokens(fused_models):
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 256)
    prompt = _prompts()[1]
    config = GenerationConfig(max_new_tokens=30)  # the default repetition guard is on
    guard = RepetitionGuard.from_config(config)
    expected = list(reference_greedy(decoder, int(np.argmax(guard.adjust(prefill(decoder, prompt)))), 30,
                                     guard=guard))
    assert list(generate(decoder, prompt, config)) == expected
    stop = expected[10]
    stopped = list(generate(decoder, prompt, GenerationConfig(max_new_tokens=30, stop_token_ids=frozenset({stop}))))
    assert stopped == expected[: expected.index(stop) + 1]


def test_speculation_respects_the_context_limit(fused_models):
    decoder = FusedDecoder.from_model_dir(fused_models("gguf", QuantizationPlan("gguf-exact")), 2, 60)
    prompt = _prompts()[2]
    tokens = list(generate(decoder, prompt, GenerationConfig(max_new_tokens=100)))
    assert len(tokens) == 60 - len(prompt)
    assert decoder.length <= 60
