"""Extract, then copy: which sentences of the passages the copy bias favours (runtime/answer_focus.py)."""
from __future__ import annotations

from runtime.answer_focus import body_sentences, focus_sentences
from runtime.retrieval import Chunk, Hit, SourceSpan

FAQ_SECTION = ("How many people are using Python?\n---------------------------------\n\n"
               "There are probably millions of users, though it's difficult to obtain an exact\ncount.\n\n"
               "Python is available for free download, so there are no sales figures.")
PUMP = "Valves are checked weekly. The coolant pump is primed by opening valve V12. Antennas point south."


def hit(rank: int, text: str, heading: str = "") -> Hit:
    return Hit(rank=rank, score=1.0 / rank, chunk=Chunk(id=rank, text=text, source=SourceSpan(
        path=f"doc{rank}.txt", line_start=1, line_end=3, page=None, heading=heading, char_start=0,
        char_end=len(text))))


def test_body_sentences_leave_out_the_heading_title_and_its_underline():
    sentences = body_sentences(hit(1, FAQ_SECTION, "General FAQ > How many people are using Python?"))
    assert sentences == ["There are probably millions of users, though it's difficult to obtain an exact count.",
                         "Python is available for free download, so there are no sales figures."]


def test_the_sentence_sharing_most_question_terms_is_chosen():
    assert focus_sentences("How is the coolant pump primed?", [hit(1, PUMP)], 1) == [
        "The coolant pump is primed by opening valve V12."]


def test_the_opening_sentence_counts_one_term_more():
    # "users" is not "using": the opening sentence shares no term, yet it ties with one sharing one
    # ("python") and comes first; without the bonus it would not be chosen at all
    question = "How many people are using Python?"
    chosen = focus_sentences(question, [hit(1, FAQ_SECTION, "FAQ > How many people are using Python?")], 2)
    assert chosen[0].startswith("There are probably millions of users")
    assert chosen[1].startswith("Python is available")


def test_better_ranked_passages_win_ties_and_nothing_is_chosen_when_asked_for_none():
    first, second = hit(1, "Nothing here. The pump is primed."), hit(2, "Other text. The pump is primed twice.")
    assert focus_sentences("Is the pump primed?", [first, second], 1) == ["The pump is primed."]
    assert focus_sentences("Is the pump primed?", [first, second], 0) == []
