"""Grounded answers: threshold gate, prompt, LLM, citations (pure orchestration over a port).

The gate runs before the model: when retrieval found nothing relevant enough, a fixed refusal
is returned without calling the LLM. A small model asked to answer from irrelevant context
answers anyway; refusing up front is cheaper and never hallucinates.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from freshrag.generate.citations import (
    Citation,
    CitationStream,
    attribute,
    extract_citations,
)
from freshrag.generate.grounding import (
    Grounding,
    SentenceCheck,
    answers_question,
    check_grounding,
    extractive_answer,
)
from freshrag.generate.prompt import (
    ChatMessage,
    Prompt,
    PromptSettings,
    TokenCounter,
    approx_tokens,
    build_prompt,
)
from freshrag.generate.sources import NumberedSource, Source

REFUSAL = "The indexed sources do not cover this question."
UNVERIFIED_WARNING = (
    "Not verified: some numbers, dates or names in this answer are not in its sources."
)
AnswerType = Literal["generated", "extractive", "raw", "refusal"]
OnUngrounded = Literal["extractive", "raw"]


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
    # The grounding guard (see `grounding`): is the presented text backed by its sources, how
    # it was made, and the model's sentences that were not (why it is extractive or raw).
    grounded: bool = True
    answer_type: AnswerType = "generated"
    unsupported: tuple[SentenceCheck, ...] = ()
    retried: bool = False
    warning: str | None = None


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
    """Last stream event: the complete answer with its citations. `replaced`: the streamed
    text failed the grounding guard and `answer.text` replaces it."""

    answer: Answer
    replaced: bool = False


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
        retry_ungrounded: bool = True,
    ) -> None:
        self.llm = llm
        self.settings = settings or PromptSettings()
        self.min_score = min_score
        self.count_tokens = count_tokens
        self.retry_ungrounded = retry_ungrounded

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
        on_ungrounded: OnUngrounded = "extractive",
    ) -> Answer:
        """Blocking answer. LLM errors (generate.llm.LLMError) propagate to the caller."""
        prompt = self.prepare(question, sources, history)
        if prompt is None:
            return refusal()
        text = self._complete(prompt)
        return self.guard(question, prompt, text, history, on_ungrounded)

    def _complete(self, prompt: Prompt) -> str:
        completion = self.llm.complete(prompt.messages, prompt.max_tokens)
        cleaner = CitationStream(len(prompt.sources))
        return (cleaner.feed(completion.text) + cleaner.finish()).strip()

    def guard(
        self,
        question: str,
        prompt: Prompt,
        text: str,
        history: Sequence[Mapping[str, str]] = (),
        on_ungrounded: OnUngrounded = "extractive",
    ) -> Answer:
        """The grounding guard around a generated text: keep it when every checkable claim is
        in its sources; else retry once with the strict prompt; else the extractive answer (or
        the raw text, flagged, when the caller asked for it)."""
        draft = _final(text, prompt)
        check = check_grounding(draft.text, prompt.cited_sources, question)
        if check.grounded and answers_question(question, draft.text):
            return draft
        if check.grounded:  # "[2]", or "The source with the number [n] is:": nothing to show
            check = Grounding(False, (SentenceCheck(draft.text, ("no answer",)),))
        retried = False
        if self.retry_ungrounded:
            strict = build_prompt(
                question,
                prompt.cited_sources,
                history,
                self.settings,
                self.count_tokens,
                strict=True,
            )
            if strict.sources:
                retried = True
                try:
                    second = _final(self._complete(strict), strict)
                except Exception:
                    second = None
                if second is not None:
                    again = check_grounding(second.text, strict.cited_sources, question)
                    if again.grounded and answers_question(question, second.text):
                        # grounded on the retry: `unsupported` still says why it was retried
                        return replace(second, retried=True, unsupported=check.unsupported)
        if on_ungrounded == "raw":
            return replace(
                draft,
                grounded=False,
                answer_type="raw",
                unsupported=check.unsupported,
                retried=retried,
                warning=UNVERIFIED_WARNING,
            )
        quoted = extractive_answer(question, prompt.cited_sources)
        if not quoted:
            return replace(refusal(), unsupported=check.unsupported, retried=retried)
        return Answer(
            text=quoted,
            citations=tuple(extract_citations(quoted, prompt.cited_sources)),
            sources_used=prompt.sources,
            prompt_tokens=prompt.prompt_tokens,
            grounded=True,
            answer_type="extractive",
            unsupported=check.unsupported,
            retried=retried,
        )

    def stream_answer(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Mapping[str, str]] = (),
        on_ungrounded: OnUngrounded = "extractive",
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
        streamed = _final(cleaner.text.strip(), prompt)
        answer = self.guard(question, prompt, cleaner.text.strip(), history, on_ungrounded)
        yield AnswerDone(answer, replaced=answer.text != streamed.text)


def refusal() -> Answer:
    """The fixed answer for questions the index does not cover."""
    return Answer(text=REFUSAL, citations=(), sources_used=(), refused=True, answer_type="refusal")


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
