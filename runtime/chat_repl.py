"""The interactive conversation of `chat`: history, slash commands, Ctrl-C that stops one answer.

This is terminal UI, so it writes to the stream it is given (stdout from the CLI).
"""
from __future__ import annotations

from typing import Callable, TextIO

from runtime.assistant import AskOptions
from runtime.prompt import ContextOverflow
from runtime.terminal_text import visible

HELP = """commands:
  /sources   the passages behind the last answer, quoted
  /reset     forget the conversation so far
  /exit      leave (Ctrl-D does too)
Ctrl-C stops the answer being written; the conversation goes on."""


class ChatRepl:
    def __init__(self, assistant, options: AskOptions, out: TextIO, read_line: Callable[[str], str] = input):
        self.assistant = assistant
        self.options = options
        self.out = out
        self.read_line = read_line
        self.history: list[dict] = []
        self.last_sources: list = []

    def run(self) -> int:
        self._say("Ask about the documents. /help lists commands.")
        while True:
            try:
                line = self.read_line("> ").strip()
            except EOFError:
                self._say("")
                return 0
            except KeyboardInterrupt:
                # As in a shell: Ctrl-C at the prompt abandons the line, not the session.
                self._say("")
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not self._command(line):
                    return 0
                continue
            self._answer(line)

    def _say(self, text: str) -> None:
        self.out.write(visible(text) + "\n")
        self.out.flush()

    def _command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name = line.split()[0].lower()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history.clear()
            self.last_sources = []
            self._say("(conversation cleared)")
        elif name == "/sources":
            self._show_sources()
        elif name == "/help":
            self._say(HELP)
        else:
            self._say(f"unknown command {name}; /help lists commands")
        return True

    def _show_sources(self) -> None:
        if not self.last_sources:
            self._say("(no sources for the last answer)")
            return
        for number, hit in enumerate(self.last_sources, 1):
            span = hit.chunk.source
            heading = f"  ({span.heading})" if span.heading else ""
            self._say(f"[{number}] {span.cite_with_copies()}{heading}")
            for text_line in hit.chunk.text.strip().splitlines():
                self._say(f"    | {text_line}")

    def _answer(self, question: str) -> None:
        answer = None
        try:
            answer = self.assistant.ask(question, self.options, history=self.history)
            for delta in answer:
                self.out.write(visible(delta))
                self.out.flush()
        except ContextOverflow as exc:
            self._say(f"error: {exc}")
            return
        except KeyboardInterrupt:
            if answer is not None:
                answer.close()
            # A cut-off answer is left out of the history: the model should not build on it.
            self._say("\n(stopped)")
            return
        self.out.write("\n")
        if answer.prompt.dropped_turns:
            self._say(f"(the {answer.prompt.dropped_turns} oldest messages no longer fit the context window "
                      "and were left out)")
        self.last_sources = list(answer.sources)
        cited = answer.cited
        if cited:
            marks = ", ".join(f"[{answer.sources.index(h) + 1}] {h.chunk.source.cite()}" for h in cited)
            self._say(f"sources: {marks}   (/sources to read them)")
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]
