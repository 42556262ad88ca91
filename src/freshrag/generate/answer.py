"""Grounded answers: threshold gate, prompt, LLM, citations (pure orchestration over a port).

The gate runs before the model: when retrieval found nothing relevant enough, a fixed refusal
is returned without calling the LLM. A small model asked to answer from irrelevant context
answers anyway; refusing up front is cheaper and never hallucinates.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from freshrag.generate.citations import Citation, CitationStream, attribute, extract_citations
from freshrag.generate.prompt import (
    ChatMessage,
    NumberedSource,
    Prompt,
    PromptSettings,
    Source,
    TokenCounter,
    approx_tokens,
    build_prompt,
)

REFUSAL = "The indexed sources do not cover this question."


class CompletionLike(Protocol):
    @property
    def text(self) -> str: ...


class LLMPort(Protocol):
    """What the answerer needs from an LLM (generate.llm.LLMClient, or a fake in unit tests)."""

    def complete(self, messages: Sequence[ChatMessage], max_tokens: int) -> CompletionLike: ...

    def stream(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """The final answer. `citations[i].number` indexes `sources_used` (1-based)."""

    text: str
    citations: tuple[Citation, ...]
    sources_used: tuple[NumberedSource, ...]
    refused: bool = False
    prompt_tokens: int = 0
    citations_inferred: bool = False  # the model wrote no markers; see citations.attribute


@dataclass(frozen=True, slots=True)
class AnswerStart:
    """First stream event: which sources the model sees (none when refused)."""

    sources_used: tuple[NumberedSource, ...]
    refused: bool


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """A piece of answer text, already cleaned of invalid citation markers."""

    text: str


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """Last stream event: the complete answer with its citations."""

    answer: Answer


AnswerEvent = AnswerStart | AnswerDelta | AnswerDone


class Answerer:
    """Answers a question from ranked sources, citing them; refuses when none is relevant.

    `min_score` is inclusive: sources scoring below it are left out of the prompt, and when
    none is left the fixed REFUSAL is returned without calling the LLM. Its scale is the
    retriever's (cosine, RRF...), so the API sets it to match the search mode.
    """

    def __init__(
        self,
        llm: LLMPort,
        settings: PromptSettings | None = None,
        min_score: float = 0.0,
        count_tokens: TokenCounter = approx_tokens,
    ) -> None:
        self.llm = llm
        self.settings = settings or PromptSettings()
        self.min_score = min_score
        self.count_tokens = count_tokens

    def relevant(self, sources: Sequence[Source]) -> list[Source]:
        """Sources at or above the threshold, rank order kept."""
        return [s for s in sources if s.score >= self.min_score]

    def ensure_fits(self, question: str) -> None:
        """Raise PromptTooLarge when the question alone cannot fit the context window (next to
        the system prompt and the answer reserve); sources and history are trimmed to fit."""
        build_prompt(question, (), (), self.settings, self.count_tokens)

    def prepare(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Mapping[str, str]] = (),
    ) -> Prompt | None:
        """The prompt to send, or None when the answer must be the refusal."""
        if not question.strip():
            raise ValueError("question is empty")
        relevant = self.relevant(sources)
        if not relevant:
            return None
        prompt = build_prompt(question, relevant, history, self.settings, self.count_tokens)
        return prompt if prompt.sources else None

    def answer(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Mapping[str, str]] = (),
    ) -> Answer:
        """Blocking answer. LLM errors (generate.llm.LLMError) propagate to the caller."""
        prompt = self.prepare(question, sources, history)
        if prompt is None:
            return refusal()
        completion = self.llm.complete(prompt.messages, prompt.max_tokens)
        cleaner = CitationStream(len(prompt.sources))
        text = (cleaner.feed(completion.text) + cleaner.finish()).strip()
        return _final(text, prompt)

    def stream_answer(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Mapping[str, str]] = (),
    ) -> Generator[AnswerEvent, None, None]:
        """AnswerStart, then AnswerDelta per cleaned token piece, then AnswerDone.

        The LLM is called on the first `next()`, before AnswerStart is yielded: an unreachable
        LLM raises there (the API can still answer 503). Later LLM errors propagate mid-stream;
        the caller turns them into an error event. Closing the generator early (client
        disconnected) closes the upstream stream.
        """
        prompt = self.prepare(question, sources, history)
        if prompt is None:
            yield AnswerStart((), refused=True)
            yield AnswerDelta(REFUSAL)
            yield AnswerDone(refusal())
            return
        # Connect before the first event, so LLM errors surface on the first next() and the
        # API can still answer 503 instead of a broken event stream.
        deltas = self.llm.stream(prompt.messages, prompt.max_tokens)
        cleaner = CitationStream(len(prompt.sources))
        try:
            yield AnswerStart(prompt.sources, refused=False)
            for delta in deltas:
                piece = cleaner.feed(delta)
                if piece:
                    yield AnswerDelta(piece)
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:  # stop the upstream stream when our consumer goes away
                close()
        tail = cleaner.finish()
        if tail:
            yield AnswerDelta(tail)
        yield AnswerDone(_final(cleaner.text.strip(), prompt))


def refusal() -> Answer:
    """The fixed answer for questions the index does not cover."""
    return Answer(text=REFUSAL, citations=(), sources_used=(), refused=True)


def _final(text: str, prompt: Prompt) -> Answer:
    citations = extract_citations(text, prompt.cited_sources)
    inferred = False
    if not citations:
        attributed = attribute(text, prompt.cited_sources)
        citations = extract_citations(attributed, prompt.cited_sources)
        inferred = bool(citations)
        text = attributed
    return Answer(
        text=text,
        citations=tuple(citations),
        sources_used=prompt.sources,
        refused=False,
        prompt_tokens=prompt.prompt_tokens,
        citations_inferred=inferred,
    )
