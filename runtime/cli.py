"""Command line of the bundle executable: ask, chat, search, info, serve, verify, apply-patch."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from runtime.bundle import Bundle, BundleError, FileBundle
from runtime.arguments import (non_negative_float, non_negative_int, port_number, positive_float, positive_int,
                               probability, share)
from runtime.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError
from runtime.network_guard import install_network_guard
from runtime.signature import SignatureError, pinned_key
from runtime.patch_command import add_apply_patch_parser, run_apply_patch
from runtime.verify_command import add_verify_parser, run_verify
from runtime.source_json import source_record
from runtime.terminal_text import visible

PROG = "bundle"
MODES = ("bm25", "dense", "hybrid")


def default_bundle_path() -> Optional[Path]:
    """The executable itself carries the payload once frozen by PyInstaller."""
    return Path(sys.executable) if getattr(sys, "frozen", False) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name if getattr(sys, "frozen", False) else PROG,
        description="Answer questions about the documents inside this bundle, offline.",
    )
    parser.add_argument("--bundle", type=Path, default=default_bundle_path(),
                        help="bundle file or staging folder (default: this executable)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for the model (default: the target profile's, at most all cores)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    # SUPPRESS keeps a value given before the command when none is given after it.
    group.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS,
                       help="CPU threads for the model (default: the target profile's, at most all cores)")
    group.add_argument("--ctx", type=positive_int, default=None,
                       help="context window in tokens, at most the bundle's (default: the bundle's)")

    from runtime.assistant import AskOptions

    defaults = AskOptions()  # the one source of the answering defaults
    answering = argparse.ArgumentParser(add_help=False)
    group = answering.add_argument_group("answering")
    group.add_argument("--k", type=positive_int, default=defaults.k, help=f"passages to retrieve (default {defaults.k})")
    group.add_argument("--mode", choices=MODES, default=None, help="retrieval mode: bm25, dense or hybrid (default: best available)")
    group.add_argument("--no-docs", action="store_true", help="answer from the model alone, without retrieval")
    group.add_argument("--max-tokens", type=positive_int, default=defaults.generation.max_new_tokens,
                       help=f"longest answer in tokens (default {defaults.generation.max_new_tokens})")
    group.add_argument("--temperature", type=non_negative_float, default=0.0, help="sampling temperature; 0 is greedy (default 0)")
    group.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    group.add_argument("--top-k", type=non_negative_int, default=0, help="sample among the k likeliest tokens (default 0: off)")
    group.add_argument("--repeat-penalty", type=positive_float, default=1.0,
                       help="penalty on tokens already generated (default 1.0: off)")
    group.add_argument("--seed", type=int, default=None, help="sampling seed: the same seed gives the same answer")
    add_repetition_arguments(group)
    add_grounding_arguments(group)
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="end the answer at this text (repeatable)")

    ask = commands.add_parser("ask", parents=[answering, model], help="answer a question from the documents, citing sources")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    commands.add_parser("chat", parents=[answering, model],
                        help="a conversation: follow-up questions, /sources, /reset, /exit; Ctrl-C stops an answer")

    serve = commands.add_parser("serve", parents=[answering, model],
                                help="OpenAI-compatible HTTP server and web page (loopback by default)",
                                description="Serve the web page at / and an OpenAI-compatible API at /v1 "
                                            "(chat/completions, models), plus /v1/search and /health. "
                                            "The answering options set the defaults for requests.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1, this machine only; any other needs an API key)")
    serve.add_argument("--port", type=port_number, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--api-key", default=os.environ.get("EDGEBUNDLE_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on /v1 (default: $EDGEBUNDLE_API_KEY)")
    serve.add_argument("--max-tokens-cap", type=positive_int, default=1024,
                       help="largest max_tokens a request may get (default 1024)")
    serve.add_argument("--max-body", type=positive_int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    serve.add_argument("--queue", type=non_negative_int, default=8,
                       help="requests that may wait while one is answered; more get 429 (default 8)")
    serve.add_argument("--queue-timeout", type=positive_float, default=120.0,
                       help="seconds a request may wait for the model before 503 (default 120)")
    serve.add_argument("--max-connections", type=positive_int, default=None,
                       help="open connections; to admit one more, the one waiting longest for its request "
                            "is cut (default 64)")
    serve.add_argument("--request-timeout", type=positive_float, default=None,
                       help="seconds a request's headers and body may take to arrive before 408 (default 30)")

    search = commands.add_parser("search", help="show the passages that best match a query")
    search.add_argument("query")
    search.add_argument("--k", type=positive_int, default=5, help="passages to show (default 5)")
    search.add_argument("--mode", choices=MODES, default=None, help="retrieval mode: bm25, dense or hybrid (default: best available)")
    search.add_argument("--json", action="store_true", help="print JSON instead of text")

    from runtime.summarize import DEFAULT_WRAP_UP

    summarize = commands.add_parser(
        "summarize", parents=[model], help="summarise a document, part of one, or what the documents say about a topic",
        description="Summarise FILE (or its lines FILE:FIRST-LAST, or its pages FILE:pFIRST-LAST), or with --query "
                    "what the documents say about a topic. Long texts are summarised in parts that fit the context "
                    "window, then combined; each sentence cites the passages it came from.")
    summarize.add_argument("scope", nargs="?", metavar="FILE[:LINES|:pPAGES]",
                           help="a document of the bundle, as `search` cites it (e.g. guide.md:10-80, manual.pdf:p3-5)")
    summarize.add_argument("--query", default=None, help="summarise what the documents say about this instead")
    summarize.add_argument("--k", type=positive_int, default=8, help="passages to retrieve for --query (default 8)")
    summarize.add_argument("--mode", choices=MODES, default=None, help="retrieval mode for --query (default: best available)")
    summarize.add_argument("--max-tokens", type=positive_int, default=200,
                           help="longest summary (and each partial summary) in tokens (default 200)")
    summarize.add_argument("--wrap-up", type=share, default=DEFAULT_WRAP_UP, metavar="SHARE",
                           help="past this share of --max-tokens, end with the next finished sentence instead of "
                                f"running to the limit; 0 never (default {DEFAULT_WRAP_UP})")
    summarize.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    info = commands.add_parser("info", help="describe the model, documents and build of this bundle")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.add_argument("--licenses", action="store_true",
                      help="list the model's licence and every Python package inside with version and licence")

    add_verify_parser(commands)
    add_apply_patch_parser(commands)
    return parser


def add_repetition_arguments(group) -> None:
    """The repetition guard's flags; defaults come from GenerationConfig, their one source."""
    from runtime.generation import GenerationConfig

    defaults = GenerationConfig()
    group.add_argument("--dry-multiplier", type=float, default=defaults.dry_multiplier,
                       help="DRY penalty on tokens that extend a sequence already in the answer; 0 turns it off "
                            f"(default {defaults.dry_multiplier})")
    group.add_argument("--dry-base", type=float, default=defaults.dry_base,
                       help=f"growth of the DRY penalty per repeated token (default {defaults.dry_base})")
    group.add_argument("--dry-allowed-length", type=int, default=defaults.dry_allowed_length,
                       help=f"repeats up to this many tokens go unpenalised (default {defaults.dry_allowed_length})")
    group.add_argument("--loop-ngram", type=int, default=defaults.loop_ngram,
                       help="stop the answer before any run of this many tokens occurs --loop-repeats times; "
                            f"0 turns it off (default {defaults.loop_ngram})")
    group.add_argument("--loop-repeats", type=int, default=defaults.loop_repeats,
                       help=f"see --loop-ngram (default {defaults.loop_repeats})")
    group.add_argument("--loop-number-repeats", type=non_negative_int, default=defaults.loop_number_repeats,
                       metavar="N", help="counting stop: with every number counted as the same token, stop before "
                                         "a run of --loop-ngram tokens holding one occurs N times (\"1, 2, 3, …\"); "
                                         f"0 turns it off (default {defaults.loop_number_repeats})")
    group.add_argument("--copy-bonus", type=non_negative_float, default=defaults.copy_bonus,
                       help="logit bonus for a token that continues a span of the passages the answer is "
                            f"quoting; 0 turns it off (default {defaults.copy_bonus})")
    group.add_argument("--copy-min-match", type=positive_int, default=defaults.copy_min_match, metavar="N",
                       help="the answer's end must repeat at least N tokens of the passages for the bonus "
                            f"(default {defaults.copy_min_match})")
    group.add_argument("--copy-focus", type=non_negative_int, default=defaults.copy_focus, metavar="N",
                       help="extract, then copy: the N sentences of the passages sharing the most words with the "
                            f"question get --copy-focus-bonus more to open and continue the answer (default "
                            f"{defaults.copy_focus})")
    group.add_argument("--copy-focus-bonus", type=non_negative_float, default=defaults.copy_focus_bonus,
                       help="logit bonus for a token that starts or continues a --copy-focus sentence, on top of "
                            f"--copy-bonus; 0 turns the focus off (default {defaults.copy_focus_bonus})")


def add_grounding_arguments(group) -> None:
    """How passages are given to the model; defaults come from GroundingOptions, their one source."""
    from runtime.prompt import PASSAGE_ORDERS, SYSTEM_PROMPTS, GroundingOptions

    defaults = GroundingOptions()
    group.add_argument("--passages", type=int, default=defaults.passages,
                       help=f"most passages shown to the model, best ranked first (default {defaults.passages})")
    group.add_argument("--trim-sentences", type=int, default=defaults.trim_sentences, metavar="N",
                       help="show only the N sentences of each passage around the question's words; "
                            f"0 shows whole passages (default {defaults.trim_sentences})")
    group.add_argument("--system-prompt", choices=sorted(SYSTEM_PROMPTS), default=defaults.system_prompt,
                       help=f"wording of the instructions to the model (default {defaults.system_prompt})")
    group.add_argument("--answer-first", action=argparse.BooleanOptionalAction, default=defaults.answer_first,
                       help="ask for the answer in one sentence first")
    group.add_argument("--stop-after-paragraph", action=argparse.BooleanOptionalAction,
                       default=defaults.stop_after_paragraph,
                       help="end the answer at the first blank line after a finished sentence")
    group.add_argument("--stop-after-sentences", type=int, default=defaults.stop_after_sentences, metavar="N",
                       help="end the answer with its N-th finished sentence and the citations after it; 0 never "
                            f"(default {defaults.stop_after_sentences})")
    group.add_argument("--stop-at-unknown-citation", action=argparse.BooleanOptionalAction,
                       default=defaults.stop_at_unknown_citation,
                       help="end the answer before it cites a source number it was not given "
                            f"(default {'on' if defaults.stop_at_unknown_citation else 'off'})")
    group.add_argument("--abstain-below", type=float, default=defaults.abstain_below, metavar="SHARE",
                       help="answer \"I don't know\" without asking the model when no passage shown (heading "
                            f"included) holds this share of the question's words; 0 never "
                            f"(default {defaults.abstain_below})")
    group.add_argument("--passage-order", choices=PASSAGE_ORDERS, default=defaults.passage_order,
                       help="passages for the answer: the best-scoring (relevance) or each document's best first, "
                            f"as `search` lists them (documents) (default {defaults.passage_order})")
    group.add_argument("--answer-prefix", default=defaults.answer_prefix, metavar="TEXT",
                       help="the answer's first words, written for the model to continue (with passages only; "
                            f"default {defaults.answer_prefix!r})")


def grounding_options(args: argparse.Namespace):
    from runtime.prompt import GroundingOptions

    return GroundingOptions(passages=args.passages, trim_sentences=args.trim_sentences,
                            system_prompt=args.system_prompt, answer_first=args.answer_first,
                            stop_after_paragraph=args.stop_after_paragraph,
                            stop_after_sentences=args.stop_after_sentences,
                            stop_at_unknown_citation=args.stop_at_unknown_citation, abstain_below=args.abstain_below,
                            answer_prefix=args.answer_prefix, passage_order=args.passage_order)


def main(argv: Optional[Sequence[str]] = None) -> int:
    install_network_guard()
    # Ctrl-C must stop an answer even when a parent started us with SIGINT ignored
    # (background jobs of a non-interactive shell, some service managers).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    if args.bundle is None:
        print("error: no bundle given (use --bundle PATH)", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        bundle = Bundle.open(args.bundle)
        enforce_pinned_key(bundle)
        return COMMANDS[args.command](bundle, args)
    except UserError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def enforce_pinned_key(bundle: Bundle) -> None:
    """An executable built with --require-signature runs only bundles its pinned key signed."""
    try:
        key = pinned_key()
    except SignatureError as exc:
        raise BundleError(str(exc)) from None
    if key is None:
        return
    if not isinstance(bundle, FileBundle):
        raise BundleError(f"{bundle.path}: this executable runs only bundle files signed by its pinned key")
    bundle.require_signature(key)


def load_assistant(bundle: Bundle, args: argparse.Namespace):
    from runtime.assistant import Assistant

    return Assistant.from_bundle(bundle, threads=args.threads, ctx=args.ctx)


def ask_options(args: argparse.Namespace):
    from runtime.assistant import AskOptions
    from runtime.generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
                              dry_multiplier=args.dry_multiplier, dry_base=args.dry_base,
                              dry_allowed_length=args.dry_allowed_length, loop_ngram=args.loop_ngram,
                              loop_repeats=args.loop_repeats, loop_number_repeats=args.loop_number_repeats,
                              copy_bonus=args.copy_bonus,
                              copy_min_match=args.copy_min_match, copy_focus=args.copy_focus,
                              copy_focus_bonus=args.copy_focus_bonus)
    return AskOptions(k=args.k, mode=args.mode, use_documents=not args.no_docs, generation=config,
                      grounding=grounding_options(args), stop=tuple(args.stop))


def run_ask(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.source_json import support_record

    options = ask_options(args)
    assistant = load_assistant(bundle, args)
    answer = assistant.ask(args.question, options)
    if args.json:
        answer.finish()
        print(json.dumps({
            "answer": answer.text.strip(),
            "sources": [source_record(hit) for hit in answer.cited],
            **support_record(answer.support),
            "stats": {**vars(answer.stats), "decode_tokens_per_s": answer.stats.decode_tokens_per_s},
        }, indent=1))
        return 0
    try:
        for delta in answer:
            sys.stdout.write(visible(delta))
            sys.stdout.flush()
    except KeyboardInterrupt:
        answer.close()
        print("\n(stopped)")
    if answer.sources:
        print("\n\nSources:")
        cited = answer.cited
        for number, hit in enumerate(answer.sources, 1):
            if hit in cited:
                print(f"  [{number}] {visible(hit.chunk.source.cite_with_copies())}")
    else:
        print()
    if answer.support is not None:
        print_support(answer.support)
    return 0


def print_support(support) -> None:
    for quote in support.quotes:
        print(f"  quote [{quote.source}]: \"{visible(quote.text)}\"")
    if not support.supported:
        print("  unsupported: the answer shares no words with its sources; check it against them")


def run_chat(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.chat_repl import ChatRepl

    try:
        import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
    except ImportError:
        pass
    options = ask_options(args)
    return ChatRepl(load_assistant(bundle, args), options, sys.stdout).run()


def run_serve(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.server import ServerConfig, ServerRefused, exposure_error, make_server

    options = ask_options(args)
    bounds = {name: value for name, value in (("max_connections", args.max_connections),
                                              ("request_timeout_s", args.request_timeout)) if value is not None}
    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key or None, max_body_bytes=args.max_body,
                          max_tokens_cap=args.max_tokens_cap, queue_size=args.queue,
                          queue_timeout_s=args.queue_timeout, k=0 if args.no_docs else args.k, mode=args.mode,
                          **bounds)
    refusal = exposure_error(config.host, config.api_key)
    if refusal:  # before the model loads: the mistake is reported at once
        raise ServerRefused(refusal)
    assistant = load_assistant(bundle, args)
    try:
        server = make_server(assistant, config, bundle.manifest.model.name, options)
    except OSError as exc:
        raise ServerRefused(f"{args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving {server.url}/ (web page) and {server.url}/v1 (OpenAI API); Ctrl-C stops", file=sys.stderr,
          flush=True)
    # A service manager stops us with SIGTERM: shut down as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def run_search(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.retrieval import Retriever

    retriever = Retriever.from_bundle(bundle)
    mode = args.mode or ("hybrid" if "hybrid" in retriever.modes else retriever.modes[0])
    hits = retriever.search(args.query, k=args.k, mode=mode)
    if args.json:
        print(json.dumps({"query": args.query, "mode": mode, "hits": [source_record(h) for h in hits]}, indent=1))
        return 0
    for hit in hits:
        print(f"{hit.rank}. {visible(hit.chunk.source.cite_with_copies())}  score {hit.score:.3f}")
        for line in hit.chunk.text.strip().splitlines()[:4]:
            print(f"     {visible(line)}")
        print()
    return 0


def run_summarize(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.generation import GenerationConfig
    from runtime.source_json import summary_record
    from runtime.summarize import Scope, Summarizer, SummaryError, passages_in_scope, reading_order

    if (args.scope is None) == (args.query is None):
        raise SummaryError("give either a document (FILE, FILE:FIRST-LAST or FILE:pFIRST-LAST) or --query TEXT")
    scope = Scope.parse(args.scope) if args.scope is not None else None
    assistant = load_assistant(bundle, args)
    if scope is not None:
        passages = passages_in_scope(assistant.retriever.chunks, scope)
    else:
        passages = reading_order(assistant.search(args.query, k=args.k, mode=args.mode))

    def on_pass(done: int, total: int) -> None:
        if not args.json:
            print(f"(summarised part {done} of {total - 1})", file=sys.stderr, flush=True)

    summary = Summarizer(assistant.tokenizer, assistant.decoder).summarize(
        passages, GenerationConfig(max_new_tokens=args.max_tokens), topic=args.query, on_pass=on_pass,
        wrap_up=args.wrap_up)
    if args.json:
        print(json.dumps(summary_record(summary.finish()), indent=1))
        return 0
    for delta in summary:
        sys.stdout.write(visible(delta))
        sys.stdout.flush()
    sentences = summary.sentences
    cited = sorted({n for s in sentences for n in s.sources})
    print("\n\nSources:" if cited else "")
    for number in cited:
        print(f"  [{number}] {visible(summary.passages[number - 1].source.cite_with_copies())}")
    unsupported = [s for s in sentences if not s.sources]
    if unsupported:
        print(f"unsupported: {len(unsupported)} of {len(sentences)} sentence(s) share no words with the passages")
    return 0


def run_info(bundle: Bundle, args: argparse.Namespace) -> int:
    from runtime.memory import bundle_context

    manifest = bundle.manifest
    if args.json:
        print(manifest.to_json())
        return 0
    if args.licenses:
        print(visible("\n".join(license_lines(manifest))))
        return 0
    model, index, build = manifest.model, manifest.index, manifest.build
    size = Path(bundle.path).stat().st_size if Path(bundle.path).is_file() else sum(e.size for e in manifest.entries)
    lines = [
        f"model:         {model.name} ({model.architecture}, {model.parameters / 1e6:.1f}M parameters)",
        f"quantization:  {model.quantization} ({model.graph} graph)",
        *([f"weights:       {model.weights}"] if model.weights else []),
        f"context:       {bundle_context(manifest)} tokens (model's own: {model.context_length})",
    ]
    profile = manifest.target_profile
    if profile is not None and profile.memory_mb:
        lines.append(f"memory:        ~{profile.memory_mb} MB at that context ({profile.threads} threads on "
                     f"{profile.name}, {profile.ram_mb} MB RAM)")
    if model.quality is not None:
        q = model.quality
        lines.append(f"quality:       perplexity {q.bundle_ppl:.3f} vs source {q.source_ppl:.3f} "
                     f"(ratio {q.ratio:.4f}, limit {q.max_ratio}) on {q.text}, {q.tokens} tokens")
    lines += [
        f"documents:     {index.documents} files, {index.chunks} passages; search: {', '.join(index.modes)}",
        f"built:         {build.created or 'undated'} by edgebundle {build.builder_version} on {build.host}",
        f"target:        {manifest.target}",
        f"size:          {size / 1e6:.1f} MB",
    ]
    if isinstance(bundle, FileBundle):
        lines.append(f"sha256:        {bundle.file_sha256()} (the whole file, as sha256sum prints it)")
    for entry in manifest.entries:
        lines.append(f"  {entry.size / 1e6:9.2f} MB  {entry.name}")
    print(visible("\n".join(lines)))
    return 0


def license_lines(manifest) -> list[str]:
    lines = [f"model: {manifest.model.name}  licence: {manifest.model.license}", "packages:"]
    if not manifest.licenses:
        lines.append("  (none recorded: not a packaged executable)")
    width = max((len(p.name) + len(p.version) for p in manifest.licenses), default=0) + 3
    lines += [f"  {(p.name + ' ' + p.version).ljust(width)}{p.license}" for p in manifest.licenses]
    return lines


COMMANDS = {"ask": run_ask, "chat": run_chat, "search": run_search, "summarize": run_summarize, "info": run_info,
            "serve": run_serve, "verify": run_verify, "apply-patch": run_apply_patch}
