"""The chat engine on the real embedded model (SmolLM2-135M through llama-cpp)."""
import threading

import pytest

from app.engine import DEFAULT_SYSTEM_PROMPT, EmptyPrompt, PromptTooLong
from conftest import quick_settings


def chat(text):
    return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}]


def test_streamed_pieces_make_the_reply(engine):
    pieces = []
    reply = engine.generate(chat("Name three colours."), quick_settings(), on_token=pieces.append)
    assert reply.text and "".join(pieces) == reply.text
    assert reply.tokens == len(pieces)
    assert reply.ttft_s > 0 and reply.tokens_per_s > 0
    assert reply.finish_reason in ("stop", "length")
    assert reply.model == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_same_seed_same_reply(engine):
    first = engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=11))
    second = engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=11))
    assert first.text == second.text


def test_cancel_stops_mid_stream(engine):
    cancel = threading.Event()
    seen = []

    def on_token(piece):
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()
    reply = engine.generate(chat("Write a long story about a lighthouse keeper."),
                            quick_settings(max_tokens=200), on_token=on_token, cancel=cancel)
    assert reply.finish_reason == "cancelled"
    assert reply.tokens == 3
    # The engine is usable again right after a cancel.
    assert engine.generate(chat("Say hi."), quick_settings()).text


def test_long_history_drops_oldest_turns(engine):
    history = [{"role": "system", "content": "Be brief."}]
    for turn in range(10):
        history.append({"role": "user", "content": f"Question {turn}: " + "lorem ipsum " * 120})
        history.append({"role": "assistant", "content": "Answer " + "dolor sit " * 60})
    history.append({"role": "user", "content": "What is 2 + 2?"})
    reply = engine.generate(history, quick_settings(max_tokens=16))
    assert reply.dropped_turns > 0
    assert reply.prompt_tokens <= engine.llm.n_ctx()
    kept, dropped, _ = engine.fit_to_context(history, 16)
    assert kept[0]["role"] == "system" and kept[1]["role"] == "user"
    assert kept[-1]["content"] == "What is 2 + 2?"


def test_prompt_longer_than_context_is_refused(engine):
    with pytest.raises(PromptTooLong) as raised:
        engine.generate(chat("word " * 5000), quick_settings())
    assert "context" in str(raised.value)


def test_empty_prompt_is_refused(engine):
    with pytest.raises(EmptyPrompt):
        engine.generate(chat("   "), quick_settings())
