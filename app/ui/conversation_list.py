"""The sidebar's conversations: a list kept in place, and a search run off the UI thread.

A daily user's history grows to thousands of conversations. Rebuilding the list after
every turn (1 500 items: 18-57 ms) and searching every message's text on the UI thread
(26 MB: 40-120 ms, at every conversation change while a term is typed) both held the
window; the list now moves, adds and drops only the items that changed, and a search
runs on a thread of its own.
"""
import threading
import time
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QListWidget, QListWidgetItem

from feedback_store import Conversation


def _tooltip(conversation: Conversation) -> str:
    return conversation.title + "\n" + time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(conversation.updated_wall_ns / 1e9))


class ConversationList(QListWidget):
    """Conversations, newest first; an item's data is its conversation id."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items: dict[str, QListWidgetItem] = {}
        self._order: list[str] = []                     # the ids on screen, top first
        self._shown: dict[str, tuple[str, int]] = {}    # id -> (title, updated) on screen

    def show_conversations(self, conversations: list[Conversation], current_id: str | None) -> None:
        """Show these, in this order, with ``current_id`` selected: items that stay are
        kept (a turn moves one item to the top rather than rebuilding thousands)."""
        wanted = {c.id for c in conversations}
        for conversation_id in [i for i in self._order if i not in wanted]:
            self.takeItem(self._order.index(conversation_id))
            self._order.remove(conversation_id)
            del self._items[conversation_id], self._shown[conversation_id]
        for position, conversation in enumerate(conversations):
            in_place = position < len(self._order) and self._order[position] == conversation.id
            if not in_place and conversation.id in self._items:      # moved
                self.insertItem(position, self.takeItem(self._order.index(conversation.id)))
                self._order.remove(conversation.id)
                self._order.insert(position, conversation.id)
            elif not in_place:                                       # new
                item = QListWidgetItem()
                item.setData(Qt.ItemDataRole.UserRole, conversation.id)
                self._items[conversation.id] = item
                self.insertItem(position, item)
                self._order.insert(position, conversation.id)
            seen = (conversation.title, conversation.updated_wall_ns)
            if self._shown.get(conversation.id) != seen:
                item = self._items[conversation.id]
                item.setText(conversation.title)
                item.setToolTip(_tooltip(conversation))
                self._shown[conversation.id] = seen
        self.select(current_id)

    def select(self, current_id: str | None) -> None:
        """The chat on screen is the selected and the current item. (Qt selects what the
        user clicks, even a chat that could not be opened; and an item taken out to move
        left Qt's current item, where the keyboard acts, on its neighbour.)"""
        if current_id in self._items:
            self.setCurrentItem(self._items[current_id])
        else:
            self.clearSelection()
            self.setCurrentRow(-1)

    def conversation_ids(self) -> list[str]:
        return [self.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.count())]


class ConversationSearch(QObject):
    """Runs ``search(term)`` on one thread of its own, for the newest request only; the
    result arrives on the UI thread as ``found``. One long-lived thread, so the store
    keeps one read cursor for it rather than one per search."""
    found = Signal(object)        # list[Conversation]
    failed = Signal(str)
    _finished = Signal(int, bool, object)     # (request, ok, result or error text)

    def __init__(self, search: Callable[[str], list[Conversation]], parent=None):
        super().__init__(parent)
        self._search = search
        self._wake = threading.Condition()
        self._wanted: str | None = None        # the term to search next (None: nothing)
        self._request = 0                      # the newest request; older results are dropped
        self._closed = False
        self._finished.connect(self._deliver)     # queued: runs on the UI thread
        self._thread = threading.Thread(target=self._run, name="glance-conversation-search",
                                        daemon=True)
        self._thread.start()

    def request(self, term: str) -> None:
        with self._wake:
            self._request += 1
            self._wanted = term
            self._wake.notify()

    def cancel(self) -> None:
        """A search under way is not shown (the term was cleared meanwhile)."""
        with self._wake:
            self._request += 1
            self._wanted = None

    def close(self) -> None:
        """Before the store closes: waits for a search under way (a fraction of a second)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._wanted is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                term, request, self._wanted = self._wanted, self._request, None
            try:
                result = self._search(term)
            except Exception as error:  # noqa: BLE001 - shown to the user; the list stays
                self._finished.emit(request, False, f"The search failed: {error}")
            else:
                self._finished.emit(request, True, result)

    def _deliver(self, request: int, ok: bool, result) -> None:
        # Checked here, on the UI thread: a request or cancel made after the search
        # ended, while its result was on its way, still drops it.
        if request != self._request or self._closed:
            return
        (self.found if ok else self.failed).emit(result)
