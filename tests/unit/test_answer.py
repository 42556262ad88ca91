"""Answer orchestration over a fake LLM port: refusal gate, citations, streaming events."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from freshrag.generate.answer import (
    REFUSAL,
    AnswerDelta,
    AnswerDone,
    Answerer,
    AnswerEvent,
    AnswerStart,
)
from freshrag.generate.prompt import ChatMessage, PromptSettings
from freshrag.generate.sources import Source


@dataclass(frozen=True)
class FakeCompletion:
    text: str


@dataclass
class FakeLLM:
    """Records every call; replies with a scripted text, streamed in fixed-size pieces."""

    reply: str = "Refunds take 30 days [1]."
    piece: int = 3
    fail: Exception | None = None
    fail_on_open: Exception | None = None
    calls: list[tuple[str, list[ChatMessage], int]] = field(default_factory=list)
    closed: bool = False

    def complete(self, messages: Sequence[ChatMessage], max_tokens: int) -> FakeCompletion:
        self.calls.append(("complete", list(messages), max_tokens))
        if self.fail:
            raise self.fail
        return FakeCompletion(self.reply)

    def stream(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]:
        self.calls.append(("stream", list(messages), max_tokens))
        if self.fail_on_open:  # like LLMClient.stream: connects eagerly
            raise self.fail_on_open
        return self._gen()

    def _gen(self) -> Iterator[str]:
        try:
            for i in range(0, len(self.reply), self.piece):
                if self.fail and i > 0:
                    raise self.fail
                yield self.reply[i : i + self.piece]
        finally:
            self.closed = True


def source(i: int, score: float) -> Source:
    return Source(
        doc_id=f"kb-{i}",
        title=f"Doc {i}",
        url=f"https://kb/{i}",
        version=i,
        updated_at="2026-11-28T12:00:00+00:00",
        chunk_index=0,
        text=f"Fact number {i}: refunds take 30 days.",  # what FakeLLM says, so it is grounded
        score=score,
    )


def test_no_sources_refuses_without_calling_llm() -> None:
    llm = FakeLLM()
    answer = Answerer(llm).answer("Anything?", [])
    assert answer.text == REFUSAL
    assert answer.refused and answer.citations == () and answer.sources_used == ()
    assert llm.calls == []


def test_sources_below_threshold_refuse_without_calling_llm() -> None:
    llm = FakeLLM()
    answerer = Answerer(llm, min_score=0.5)
    answer = answerer.answer("Anything?", [source(1, 0.49), source(2, 0.1)])
    assert answer.refused and answer.text == REFUSAL
    events = list(answerer.stream_answer("Anything?", [source(1, 0.2)]))
    assert events[0] == AnswerStart((), refused=True)
    assert events[1] == AnswerDelta(REFUSAL)
    assert isinstance(events[2], AnswerDone) and events[2].answer.refused
    assert llm.calls == []


def test_threshold_is_inclusive_and_filters_the_prompt() -> None:
    llm = FakeLLM(reply="Yes [1][2].")
    answer = Answerer(llm, min_score=0.5).answer(
        "q?", [source(1, 0.9), source(2, 0.2), source(3, 0.5)]
    )
    assert not answer.refused
    assert [ns.source.doc_id for ns in answer.sources_used] == ["kb-1", "kb-3"]
    # [2] now means kb-3, the second source the model saw.
    assert [(c.number, c.doc_id) for c in answer.citations] == [(1, "kb-1"), (2, "kb-3")]
    user = llm.calls[0][1][-1]["content"]
    assert "Fact number 2:" not in user and "Fact number 3:" in user


def test_answer_calls_llm_with_prompt_and_returns_valid_citations() -> None:
    llm = FakeLLM(reply="Fact two [2], fact one [1], made up [7].")
    settings = PromptSettings(answer_tokens=200)
    answer = Answerer(llm, settings).answer("What facts?", [source(1, 0.9), source(2, 0.8)])

    assert len(llm.calls) == 1
    kind, messages, max_tokens = llm.calls[0]
    assert (kind, max_tokens) == ("complete", 200)
    assert messages[0]["role"] == "system"
    assert '<source id="2">' in messages[-1]["content"]
    assert answer.text == "Fact two [2], fact one [1], made up."
    assert [c.number for c in answer.citations] == [2, 1]
    assert [c.doc_id for c in answer.citations] == ["kb-2", "kb-1"]
    assert not answer.refused
    assert answer.prompt_tokens > 0


def test_history_reaches_the_llm() -> None:
    llm = FakeLLM()
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello [1]"}]
    Answerer(llm).answer("and refunds?", [source(1, 1.0)], history)
    roles = [m["role"] for m in llm.calls[0][1]]
    assert roles == ["system", "user", "assistant", "user"]
    assert llm.calls[0][1][2]["content"] == "hello"


def test_stream_events_tokens_then_final_with_citations() -> None:
    llm = FakeLLM(reply="Refunds take 30 days [1]. Also [9] shipping [2].", piece=2)
    events: list[AnswerEvent] = list(
        Answerer(llm).stream_answer("q?", [source(1, 0.9), source(2, 0.9)])
    )
    start, *deltas, done = events
    assert isinstance(start, AnswerStart) and not start.refused
    assert [ns.number for ns in start.sources_used] == [1, 2]
    assert all(isinstance(e, AnswerDelta) and e.text for e in deltas)
    assert len(deltas) > 3
    assert isinstance(done, AnswerDone)
    streamed = "".join(e.text for e in deltas if isinstance(e, AnswerDelta))
    assert streamed.strip() == done.answer.text
    assert done.answer.text == "Refunds take 30 days [1]. Also shipping [2]."
    assert [c.number for c in done.answer.citations] == [1, 2]
    assert llm.calls[0][0] == "stream"
    assert llm.closed


def test_stream_closes_upstream_when_consumer_stops() -> None:
    llm = FakeLLM(reply="x" * 60, piece=1)
    events = Answerer(llm).stream_answer("q?", [source(1, 1.0)])
    next(events)  # start
    next(events)  # first delta
    events.close()
    assert llm.closed


def test_llm_errors_propagate() -> None:
    boom = RuntimeError("upstream down")
    with pytest.raises(RuntimeError, match="upstream down"):
        Answerer(FakeLLM(fail=boom)).answer("q?", [source(1, 1.0)])
    events = Answerer(FakeLLM(fail=boom)).stream_answer("q?", [source(1, 1.0)])
    with pytest.raises(RuntimeError, match="upstream down"):
        list(events)


def test_unreachable_llm_fails_before_the_first_stream_event() -> None:
    llm = FakeLLM(fail_on_open=ConnectionError("no route"))
    events = Answerer(llm).stream_answer("q?", [source(1, 1.0)])
    with pytest.raises(ConnectionError):
        next(events)  # nothing was yielded: the API can still answer 503


def test_empty_question_rejected_before_llm() -> None:
    llm = FakeLLM()
    with pytest.raises(ValueError):
        Answerer(llm).answer("  ", [source(1, 1.0)])
    assert llm.calls == []
