"""freshrag: a streaming RAG platform that keeps a Qdrant index in step with Kafka change events."""

__version__ = "0.1.0"
