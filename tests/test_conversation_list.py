"""The sidebar's conversation list on the real window and store: kept in place across
turns, and searched without holding the window."""
import threading
import time

from PySide6.QtCore import Qt

from feedback_store import Conversation, Message
from test_ui import send_by_keyboard


def add_chat(store, title: str, text: str) -> str:
    conversation = store.conversations.create(Conversation(title=title))
    store.conversations.add_message(Message(conversation_id=conversation.id, role="user",
                                            content=text))
    return conversation.id


def titles(window) -> list[str]:
    return [window.conversation_list.item(i).text()
            for i in range(window.conversation_list.count())]


def hold_the_store(store):
    """What a delete's rewrite does: no read gets through until ``release`` is set (by
    the test, or by a safety timer that lets a frozen window go, to fail below)."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with store.reading().exclusive():
            held.set()
            release.wait(30)
    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(30)
    safety = threading.Timer(20.0, release.set)
    safety.start()
    return release, safety


def search_waiting_for_the_store(qtbot, window, store):
    """Two chats, and a search for "apples" asked while the store is held."""
    add_chat(store, "Fruit", "I like apples.")
    add_chat(store, "Veg", "I like leeks.")
    release, safety = hold_the_store(store)
    search = window.conversation_search
    before = search._request
    window.search.setText("apples")
    qtbot.waitUntil(lambda: search._request > before, timeout=30_000)   # asked (after 250 ms)
    return search, release, safety


def test_a_turn_moves_its_chat_to_the_top_and_keeps_every_item(qtbot, store, engine):
    """Every turn rebuilt the whole list (1 500 chats: 18-57 ms on the UI thread)."""
    from app.ui.main_window import MainWindow
    from conftest import quick_settings
    store.settings.set("generation", quick_settings().to_dict())
    ids = [add_chat(store, f"chat {n}", f"message {n}") for n in range(3)]
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    window.show()
    assert titles(window) == ["chat 2", "chat 1", "chat 0"]
    items = {window.conversation_list.item(i).data(Qt.ItemDataRole.UserRole):
             window.conversation_list.item(i) for i in range(3)}
    listed = window.conversation_list
    qtbot.mouseClick(listed.viewport(), Qt.MouseButton.LeftButton,
                     pos=listed.visualItemRect(items[ids[0]]).center())
    assert window.tree.id == ids[0]
    send_by_keyboard(qtbot, window, "Name a colour.")
    assert titles(window) == ["chat 0", "chat 2", "chat 1"]
    assert [listed.item(i) for i in range(3)] == [items[ids[0]], items[ids[2]], items[ids[1]]]
    assert [items[i].isSelected() for i in ids] == [True, False, False]
    assert listed.currentItem() is items[ids[0]]     # where the keyboard acts: not a neighbour
    window.rename_conversation(ids[1], "Renamed")
    assert titles(window) == ["Renamed", "chat 0", "chat 2"]          # (renamed: updated)
    assert window.conversation_list.item(0) is items[ids[1]]
    window.close()


def test_a_search_never_holds_the_window(qtbot, window, store):
    """The search scanned every message's text on the UI thread; behind a delete's
    rewrite, the window waited with it."""
    search, release, safety = search_waiting_for_the_store(qtbot, window, store)
    qtbot.wait(300)
    assert not release.is_set(), "the window waited for the search"
    release.set()
    safety.cancel()
    qtbot.waitUntil(lambda: titles(window) == ["Fruit"], timeout=30_000)
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert window.search.hasFocus() and window.search.selectedText() == "apples"
    qtbot.keyClicks(window.search, "zebra")                  # replaces the term
    qtbot.waitUntil(lambda: titles(window) == [], timeout=30_000)
    assert window.statusBar().currentMessage() == "No conversation mentions “zebra”."
    window.search.setText("")
    qtbot.waitUntil(lambda: titles(window) == ["Veg", "Fruit"], timeout=30_000)


def test_a_search_cleared_while_it_runs_is_not_shown(qtbot, window, store):
    """Its result came after the whole list and replaced it with the matches."""
    search, release, safety = search_waiting_for_the_store(qtbot, window, store)
    asked = search._request

    def release_once_cleared():        # (the whole list is then read on the UI thread)
        while search._request == asked:
            time.sleep(0.01)
        release.set()
    threading.Thread(target=release_once_cleared, daemon=True).start()
    with qtbot.waitSignal(search._finished, timeout=30_000):
        window.search.setText("")
    safety.cancel()
    qtbot.wait(200)                    # the result's delivery, had it been shown
    assert titles(window) == ["Veg", "Fruit"]


def test_the_list_shows_any_change_of_order_titles_and_membership(qtbot):
    """Kept in place, the list must still end up exactly as asked, whatever changed."""
    import random
    from app.ui.conversation_list import ConversationList
    rng = random.Random(3)
    view = ConversationList()
    qtbot.addWidget(view)
    pool = [Conversation(title=f"chat {n}", id=f"c{n}", updated_wall_ns=n) for n in range(12)]
    for _ in range(200):
        shown = rng.sample(pool, rng.randint(0, len(pool)))
        for conversation in rng.sample(shown, min(2, len(shown))):
            conversation.title = f"title {rng.randint(0, 99)}"
        current = rng.choice(shown).id if shown and rng.random() < 0.8 else None
        view.show_conversations(shown, current)
        assert view.conversation_ids() == [c.id for c in shown]
        assert [view.item(i).text() for i in range(view.count())] == [c.title for c in shown]
        assert [view.item(i).isSelected() for i in range(view.count())] == [
            c.id == current for c in shown]
        # ... and the current item, where the keyboard acts, is that chat or none
        assert view.currentRow() == ([c.id for c in shown].index(current) if current else -1)


def test_a_listed_chat_that_cannot_be_opened_does_not_stay_selected(qtbot, window, store):
    """A chat deleted while a search was still listing it: clicked, it said why it could
    not open, and stayed highlighted while another chat was on screen."""
    kept = add_chat(store, "Kept", "I like apples.")
    gone = add_chat(store, "Gone", "I like leeks.")
    window.open_conversation(kept)
    store.delete_conversation(gone, compact=False)   # the list has not heard yet
    listed = window.conversation_list
    item = next(listed.item(i) for i in range(listed.count())
                if listed.item(i).data(Qt.ItemDataRole.UserRole) == gone)
    qtbot.mouseClick(listed.viewport(), Qt.MouseButton.LeftButton,
                     pos=listed.visualItemRect(item).center())
    assert window.tree.id == kept and window.last_error
    assert [i.data(Qt.ItemDataRole.UserRole) for i in listed.selectedItems()] == [kept]
