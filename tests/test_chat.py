"""Conversations, branches and persistence through ChatService, real model and store."""
import pytest

from app.chat import ChatService
from feedback_store import FeedbackStore
from conftest import files_contain, quick_settings


def new_tree(service):
    tree = service.new_conversation()
    service.set_settings(tree, quick_settings())
    return tree


def test_send_commits_both_messages(service, store):
    tree = new_tree(service)
    user, reply = service.send(tree, "Hello there")
    stored = {m.id: m for m in store.conversations.messages(tree.id)}
    assert stored[user.id].content == "Hello there"
    assert stored[reply.id].parent_id == user.id
    assert stored[reply.id].tokens == reply.tokens and stored[reply.id].ttft_s > 0
    assert store.conversations.get(tree.id).title == "Hello there"


def test_empty_conversation_is_not_written(service, store):
    new_tree(service)
    assert store.conversations.list() == []


def test_regenerate_keeps_the_old_reply_as_sibling(service, store):
    tree = new_tree(service)
    _, first = service.send(tree, "Give me a word.")
    second = service.regenerate(tree, first.id)
    assert second.parent_id == first.parent_id
    assert second.content != first.content      # seed + k: a new reply, not a copy
    siblings = tree.siblings(second.id)
    assert [m.id for m in siblings] == [first.id, second.id]
    assert {m.id for m in store.conversations.messages(tree.id)} >= {first.id, second.id}
    assert tree.active_path()[-1].id == second.id
    service.switch_to(tree, first.id)
    assert tree.active_path()[-1].id == first.id


def test_edit_creates_a_branch(service, store):
    tree = new_tree(service)
    user1, reply1 = service.send(tree, "What is a cat?")
    user2, reply2 = service.send(tree, "And a dog?")
    edited, reply3 = service.edit(tree, user2.id, "And a horse?")
    assert edited.parent_id == user2.parent_id == reply1.id
    assert [m.content for m in tree.active_path()][:3] == ["What is a cat?", reply1.content, "And a horse?"]
    # The original branch is still there.
    assert tree.messages[user2.id].content == "And a dog?"
    assert len(store.conversations.messages(tree.id)) == 6


def test_restart_restores_conversations_and_branch(service, store, engine, home):
    tree = new_tree(service)
    _, first = service.send(tree, "Count to three.")
    second = service.regenerate(tree, first.id)
    service.switch_to(tree, first.id)
    store.close()
    with FeedbackStore.open(home) as reopened:
        again = ChatService(reopened, engine).open(tree.id)
        assert [c.id for c in reopened.conversations.list()] == [tree.id]
        assert again.active_path()[-1].id == first.id
        assert len(again.siblings(second.id)) == 2
        assert again.settings().max_tokens == quick_settings().max_tokens


def test_incognito_chat_writes_nothing(service, store, home):
    tree = service.new_conversation(incognito=True)
    service.set_settings(tree, quick_settings())
    user, reply = service.send(tree, "INCOGNITO-MARKER-42 what is tea?")
    assert reply.content and tree.active_path()[-1].id == reply.id
    store.flush()
    assert store.conversations.list() == []
    assert store.counts()["messages"] == 0
    store.close()
    from feedback_store.connection import open_encrypted
    from feedback_store.keys import load_or_create_key
    key = load_or_create_key(home, home / "glance.db")
    con = open_encrypted(home / "glance.db", key.hex, read_only=True)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    con.close()
    assert files_contain(home, b"INCOGNITO-MARKER-42") == []


def test_search_finds_titles_and_message_text(service, store):
    tree = new_tree(service)
    service.send(tree, "Tell me about zebras")
    assert [c.id for c in store.conversations.list("ZEBRA")] == [tree.id]
    assert store.conversations.list("giraffe") == []
    # What is typed is searched as typed: % and _ are not wildcards.
    other = new_tree(service)
    service.send(other, "Is 100% of snake_case code tested?")
    assert [c.id for c in store.conversations.list("100%")] == [other.id]
    assert [c.id for c in store.conversations.list("snake_case")] == [other.id]
    assert store.conversations.list("e_t") == [] and store.conversations.list("1%0") == []
    assert store.conversations.list("\\") == []


def test_a_page_longer_than_the_start_context_is_answered_in_a_larger_one(store):
    """The context was fixed at 2 048 tokens whatever the model allowed: a pasted page of
    ~2 200 tokens was refused with "choose a model with a longer context" on SmolLM2,
    which has 8 192. The context now grows, once, when a conversation needs it; the
    message is checked against that limit before it is stored, as the window and
    `glance chat` send it."""
    from app.chat import ChatService
    from app.engine import ChatEngine
    engine = ChatEngine()                        # its own: it grows
    try:
        assert engine.llm.n_ctx() == 2048 and engine.context_limit == 8192
        service = ChatService(store, engine)
        tree = service.new_conversation()
        service.set_settings(tree, quick_settings(max_tokens=4))
        page = " ".join(f"Line {i}: the tide came in at dawn and left at noon." for i in range(135))
        user, reply = service.send(tree, page + "\nSummarise.")
        assert reply.prompt_tokens > 2048 and reply.dropped_turns == 0
        assert engine.llm.n_ctx() > reply.prompt_tokens
    finally:
        engine.close()


def test_a_page_free_memory_cannot_hold_is_refused_before_it_is_stored(store, monkeypatch):
    """Checked against the model's limit, a page was stored and shown as sent, then
    refused when free memory kept the context from growing, with "shorten it" as the
    advice; Retry failed the same way. It is refused before anything is stored, and the
    message says memory is what is short."""
    import app.engine
    from app.chat import ChatService
    from app.engine import ChatEngine, PromptTooLong
    engine = ChatEngine()
    try:
        monkeypatch.setattr(app.engine, "available_memory_bytes", lambda: 8 * 2**20)   # a full machine
        assert engine.reachable_context == engine.llm.n_ctx() == 2048
        service = ChatService(store, engine)
        tree = service.new_conversation()
        service.set_settings(tree, quick_settings(max_tokens=4))
        page = " ".join(f"Line {i}: the tide came in at dawn and left at noon." for i in range(135))
        with pytest.raises(PromptTooLong, match="too little free memory"):
            service.send(tree, page + "\nSummarise.")
        assert store.conversations.list() == [] and not tree.stored
    finally:
        engine.close()
