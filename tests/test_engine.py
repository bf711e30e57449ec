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


def test_same_seed_same_reply_and_the_seed_matters(engine):
    first = engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=11))
    second = engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=11))
    assert first.text == second.text
    others = {engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=seed)).text
              for seed in (12, 13, 14)}
    assert others - {first.text}          # another seed, another reply (not a fixed one)


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


def test_cancel_stops_the_reading_of_a_long_prompt(engine):
    """The prompt is read in one llama.cpp call that the check between pieces cannot
    reach: Stop (or closing the window) waited for all of it, minutes for a long chat on a
    big model. A cancel now stops the reading too, and the engine answers normally after."""
    cancel = threading.Event()
    cancel.set()                     # e.g. the window closed as the message was sent
    long_prompt = chat("Summarise this: " + "the quick brown fox jumps over the lazy dog " * 120)
    reply = engine.generate(long_prompt, quick_settings(max_tokens=50), cancel=cancel)
    assert reply.finish_reason == "cancelled" and reply.tokens == 0
    assert reply.prompt_tokens > 1000
    assert engine.llm.n_tokens < reply.prompt_tokens        # stopped before its end
    first = engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=11))
    second = engine.generate(chat("Tell me a fact about owls."), quick_settings(seed=11))
    assert first.text and first.text == second.text


def test_an_error_while_a_cancel_is_pending_is_not_taken_for_the_cancel(engine):
    """Only llama.cpp stopping at the cancel is a cancel: another error raised meanwhile
    (here by the consumer of the pieces) still surfaces."""
    cancel = threading.Event()

    def on_token(piece):
        cancel.set()
        raise RuntimeError("the consumer failed")
    with pytest.raises(RuntimeError, match="the consumer failed"):
        engine.generate(chat("Say hi."), quick_settings(), on_token=on_token, cancel=cancel)
    assert engine.generate(chat("Say hi."), quick_settings()).text


def test_long_history_drops_oldest_turns():
    from app.engine import ChatEngine
    engine = ChatEngine(max_ctx=None)            # 2 048 tokens, never more
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
    engine.close()


def reference_fit(engine, messages, max_tokens):
    """The definition: drop one turn more at a time (never starting on an assistant
    turn) until the whole prompt, counted exactly, leaves room for the reply."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    room = engine.llm.n_ctx() - min(max_tokens, engine.llm.n_ctx() // 4)
    dropped = 0
    while True:
        tokens = engine.count_prompt_tokens(system + turns[dropped:])
        if tokens <= room or dropped >= len(turns) - 1:
            return system + turns[dropped:], dropped, tokens
        dropped += 1
        while dropped < len(turns) - 1 and turns[dropped]["role"] == "assistant":
            dropped += 1


def test_a_long_chat_is_fitted_with_a_few_counts_not_one_per_dropped_turn(engine):
    """Each send counted the whole prompt once per turn left out: quadratic, 12 s a count
    in a chat of 300 messages (and twice per send). The answer is the same as dropping
    one turn at a time; the number of whole-prompt counts no longer grows with the chat."""
    import random
    rng = random.Random(7)
    calls = []
    count = engine.count_prompt_tokens

    def counting(messages):
        calls.append(len(messages))
        return count(messages)
    for size in (40, 300):
        history = [{"role": "system", "content": "Be brief."}]
        for turn in range(size // 2):
            history.append({"role": "user", "content": f"Question {turn}: "
                            + "lorem ipsum " * rng.randint(1, 80)})
            history.append({"role": "assistant", "content": "Answer "
                            + "dolor sit amet, " * rng.randint(1, 60)})
        history.append({"role": "user", "content": "And what is 2 + 2?"})
        for max_tokens in (16, 400):
            expected = reference_fit(engine, history, max_tokens)
            calls.clear()
            engine.count_prompt_tokens = counting
            try:
                assert engine.fit_to_context(history, max_tokens) == expected
            finally:
                del engine.count_prompt_tokens
            assert expected[1] > 0 and len(calls) <= 8, (size, max_tokens, len(calls))
    # A message that can never fit is refused after counting it alone, not the history.
    with pytest.raises(PromptTooLong):
        engine.fit_to_context(history[:-1] + [{"role": "user", "content": "word " * 5000}], 16)


def test_prompt_longer_than_context_is_refused(engine):
    with pytest.raises(PromptTooLong) as raised:
        engine.generate(chat("word " * 9000), quick_settings())    # > SmolLM2's 8 192
    assert str(raised.value).startswith("This message is ") and "context" in str(raised.value)


def test_a_system_prompt_too_long_for_the_context_is_named_not_the_message(engine):
    """Every message was refused as too long, however short, and the system prompt set
    in Settings was never mentioned."""
    messages = [{"role": "system", "content": "Always remember: " + "be kind. " * 3000},
                {"role": "user", "content": "Hi"}]
    with pytest.raises(PromptTooLong) as raised:
        engine.generate(messages, quick_settings())
    assert str(raised.value).startswith("The system prompt alone is ")
    assert "Shorten the system prompt (Settings…)" in str(raised.value)


def test_empty_prompt_is_refused(engine):
    with pytest.raises(EmptyPrompt):
        engine.generate(chat("   "), quick_settings())


# Chat templates as they ship in popular GGUFs: Gemma-2 refuses a system role, Mistral's
# refuses anything but alternating user and assistant turns.
GEMMA_2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
           "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
           "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
           "alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
           "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
           "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
           "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
           "{{'<start_of_turn>model\\n'}}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
           "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
           "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
           "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
           "user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def test_a_template_that_refuses_a_system_role_or_repeated_turns_still_gets_the_chat():
    """With Gemma's or Mistral's template every message failed ("System role not
    supported"): the system prompt is folded into the first user turn, and two user turns
    in a row (a reply stopped before any text) become one."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from align.templates import TemplateRefused, TemplateRules, template_rules
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Stop"},
               {"role": "user", "content": "Tell me about owls."}]
    for template in (GEMMA_2, MISTRAL):
        formatter = Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")
        with pytest.raises(Exception):
            formatter(messages=history)
        rules = template_rules(lambda messages: formatter(messages=messages))
        assert rules == TemplateRules(fold_system=True, merge_turns=True)
        prompt = formatter(messages=rules.apply(history)).prompt
        assert "Be brief.\n\nHi" in prompt and "Stop\n\nTell me about owls." in prompt
    refusing = Jinja2ChatFormatter(template="{{ raise_exception('no') }}", eos_token="", bos_token="")
    with pytest.raises(TemplateRefused, match="cannot format even a one-message conversation"):
        template_rules(lambda messages: refusing(messages=messages))


def test_the_embedded_models_template_takes_the_conversation_as_it_is(engine):
    from align.templates import TemplateRules
    assert engine._rules == TemplateRules()
    messages = chat("Name a colour.")
    assert engine._rules.apply(messages) == messages


def test_a_message_refused_at_any_size_does_not_reload_the_model(engine):
    """The context grows by reloading the model: for a message (or system prompt) longer
    than the model's whole context that reload bought nothing but the wait."""
    before = engine.llm
    for messages in ([{"role": "user", "content": "word " * 9000}],
                     [{"role": "system", "content": "be kind. " * 3000},
                      {"role": "user", "content": "Hi"}]):
        with pytest.raises(PromptTooLong):
            engine.generate(messages, quick_settings())
    assert engine.llm is before


def test_the_chat_reads_the_prompt_glance_counts_and_trains_on(tmp_path):
    """llama-cpp-python swaps a chat template it recognises (ChatML, Mistral-instruct,
    Llama-3) for a formatter of its own: for a Mistral-style model it read "</s>[INST]"
    and its own BOS where the model's template, which Glance fits the context with and
    the nightly job trains on, says "</s> [INST]". The chat now reads the template."""
    from llama_cpp.llama_chat_format import MISTRAL_INSTRUCT_CHAT_TEMPLATE
    from app.engine import ChatEngine
    from app.models import default_model_path
    from conftest import copy_gguf_with_template
    model = copy_gguf_with_template(default_model_path(), tmp_path / "mistral-style.gguf",
                                    MISTRAL_INSTRUCT_CHAT_TEMPLATE)
    engine = ChatEngine(model, max_ctx=None)
    try:
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye"}]
        engine.generate(messages, quick_settings(max_tokens=2))
        template = engine._formatter(messages=engine._rules.apply(messages)).prompt
        assert "<|im_end|> [INST] Bye" in template       # (this model's end-of-sequence)
        expected = engine.llm.tokenize(template.encode(), add_bos=False, special=True)
        assert engine.count_prompt_tokens(messages) == len(expected)
        read = [int(t) for t in engine.llm.input_ids[:len(expected)]]
        assert engine.llm.detokenize(read, special=True) == engine.llm.detokenize(expected, special=True)
        assert read == expected
    finally:
        engine.close()
