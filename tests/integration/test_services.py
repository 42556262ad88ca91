"""The real local services the platform runs on: Kafka broker, LLM server, embedder."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.integration


@pytest.mark.kafka
def test_kafka_produce_and_consume(kafka_bootstrap: str, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("services", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(20)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value, headers=[("h", b"1")])
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: dict[bytes, bytes] = {}
    partitions = set()
    try:
        for _ in range(300):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got[msg.key()] = msg.value()
            partitions.add(msg.partition())
            assert msg.headers() == [("h", b"1")]
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert got == sent
    assert partitions == {0, 1}


@pytest.mark.llm
def test_llm_server_answers_through_openai_client(llm_base_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=llm_base_url, api_key="sk-local", timeout=60)
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]
    reply = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, seed=42, max_tokens=24
    )
    text = reply.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    again = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, seed=42, max_tokens=24
    )
    assert again.choices[0].message.content == text  # temperature 0 + seed: deterministic

    stream = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, seed=42, max_tokens=24, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1  # really streamed, token by token
    assert "".join(pieces).strip() == text.strip()


def test_embedder_normalized_and_semantic(embedder) -> None:  # type: ignore[no-untyped-def]
    vectors = np.array(
        embedder.embed_documents(
            [
                "The cat is sleeping on the sofa.",
                "A kitten naps on the couch.",
                "Interest rates were raised by the central bank.",
            ]
        )
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.3
    assert sims[0, 1] > sims[1, 2] + 0.3
    query = np.array(embedder.embed_query("where is the cat sleeping?"))
    assert float(query @ vectors[0]) > float(query @ vectors[2])
    assert embedder.embed_query("where is the cat sleeping?") is embedder.embed_query(
        "where is the cat sleeping?"
    )  # served from the LRU cache
