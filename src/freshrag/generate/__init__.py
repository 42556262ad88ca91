"""Grounded generation: prompts and citations (pure), the LLM adapter, answer orchestration.

Only the pure pieces are re-exported here, so importing this package never imports openai;
the adapter lives in `freshrag.generate.llm` and is built once by the app lifespan.
"""

from freshrag.generate.answer import (
    REFUSAL,
    Answer,
    AnswerDelta,
    AnswerDone,
    Answerer,
    AnswerEvent,
    AnswerStart,
    LLMPort,
)
from freshrag.generate.citations import Citation, CitationStream, extract_citations
from freshrag.generate.prompt import (
    ChatMessage,
    Prompt,
    PromptSettings,
    PromptTooLarge,
    build_prompt,
    split_conversation,
)
from freshrag.generate.sources import NumberedSource, Source

__all__ = [
    "REFUSAL",
    "Answer",
    "AnswerDelta",
    "AnswerDone",
    "AnswerEvent",
    "AnswerStart",
    "Answerer",
    "ChatMessage",
    "Citation",
    "CitationStream",
    "LLMPort",
    "NumberedSource",
    "Prompt",
    "PromptSettings",
    "PromptTooLarge",
    "Source",
    "build_prompt",
    "extract_citations",
    "split_conversation",
]
