"""Conversations as trees, and the turns that grow them. No Qt.

Both the CLI and the window drive chat through :class:`ChatService`: it keeps the open
conversation in memory (so incognito chats work without ever touching the disk), commits
every message through the store before reporting it as sent, and never deletes a reply:
regenerating adds a sibling, editing a user message starts a branch.
"""
import threading
from dataclasses import dataclass, field
from typing import Callable

from feedback_store import Conversation, FeedbackStore, Message, UnknownConversation

from .engine import ChatEngine, EmptyPrompt, GenerationSettings, PromptTooLong, Reply

DEFAULT_TITLE = "New chat"


@dataclass
class ConversationTree:
    conversation: Conversation
    messages: dict[str, Message] = field(default_factory=dict)
    stored: bool = True  # False until its first message: empty chats are never written
    # An incognito chat's thumbs: in memory only, as the chat is (they were lost at the
    # next turn, when the rows are shown again from what the store has: nothing).
    memory_thumbs: dict[str, int] = field(default_factory=dict)
    # Settings for the turns sent through this object only, never saved with the chat
    # (`glance chat --max-tokens 3` made a new chat's every later reply 3 tokens long).
    overrides: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.conversation.id

    def children(self, parent_id: str | None) -> list[Message]:
        kids = [m for m in self.messages.values() if m.parent_id == parent_id]
        return sorted(kids, key=lambda m: (m.created_wall_ns, m.id))

    def siblings(self, message_id: str) -> list[Message]:
        return self.children(self.messages[message_id].parent_id)

    def path_to(self, message_id: str | None) -> list[Message]:
        path = []
        while message_id is not None:
            message = self.messages[message_id]
            path.append(message)
            message_id = message.parent_id
        return path[::-1]

    def newest_leaf_under(self, message_id: str) -> str:
        """Follow the newest child down to a leaf: what 'show this branch' means."""
        while kids := self.children(message_id):
            message_id = kids[-1].id
        return message_id

    def active_path(self) -> list[Message]:
        leaf = self.conversation.active_leaf_id
        if leaf not in self.messages:
            roots = self.children(None)
            leaf = self.newest_leaf_under(roots[-1].id) if roots else None
        return self.path_to(leaf)

    def settings(self) -> GenerationSettings:
        return GenerationSettings.from_dict({**self.conversation.settings, **self.overrides})


class ChatService:
    def __init__(self, store: FeedbackStore, engine: ChatEngine):
        self.store = store
        self.engine = engine

    # --- conversations ---------------------------------------------------------------
    def new_conversation(self, title: str = DEFAULT_TITLE, incognito: bool = False,
                         settings: GenerationSettings | None = None) -> ConversationTree:
        settings = settings or GenerationSettings.from_dict(self.store.settings.get("generation"))
        conversation = Conversation(title=title, incognito=incognito, settings=settings.to_dict())
        if incognito:
            self.store.conversations.create(conversation)  # registers it as never-write
        return ConversationTree(conversation, stored=incognito)

    def open(self, conversation_id: str) -> ConversationTree:
        conversation = self.store.conversations.get(conversation_id)
        if conversation is None:
            raise UnknownConversation(conversation_id)
        tree = ConversationTree(conversation)
        tree.messages = {m.id: m for m in self.store.conversations.messages(conversation_id)}
        return tree

    def conversations(self, search: str | None = None) -> list[Conversation]:
        return self.store.conversations.list(search)

    def thumbs(self, tree: ConversationTree) -> dict[str, int]:
        if tree.conversation.incognito:
            return dict(tree.memory_thumbs)
        if not tree.stored:
            return {}
        return self.store.conversations.thumbs(tree.id)

    def rename(self, tree: ConversationTree, title: str) -> None:
        title = title.strip() or DEFAULT_TITLE
        tree.conversation.title = title
        if tree.stored:
            self.store.conversations.rename(tree.id, title)

    def set_settings(self, tree: ConversationTree, settings: GenerationSettings) -> None:
        settings.validate()
        tree.conversation.settings = settings.to_dict()
        if tree.stored:
            self.store.conversations.update_settings(tree.id, tree.conversation.settings)

    def delete(self, tree_or_id) -> None:
        conversation_id = getattr(tree_or_id, "id", tree_or_id)
        self.store.delete_conversation(conversation_id)

    def switch_to(self, tree: ConversationTree, message_id: str) -> None:
        """Show the branch that goes through ``message_id``."""
        leaf = tree.newest_leaf_under(message_id)
        tree.conversation.active_leaf_id = leaf
        self.store.conversations.set_active_leaf(tree.id, leaf)

    # --- turns -----------------------------------------------------------------------
    def post_user_message(self, tree: ConversationTree, text: str,
                          parent_id: str | None = ...) -> Message:
        """Commit the user's message; only after this returns is it shown as sent.

        The prompt is checked against the context first, so a message that can never
        fit is refused before anything is stored (the UI keeps it in the input box).
        """
        if not text.strip():
            raise EmptyPrompt()
        tree.settings().validate()   # bad settings are refused before anything is stored
        if parent_id is ...:
            path = tree.active_path()
            parent_id = path[-1].id if path else None
        history = self._chat_messages(tree, tree.path_to(parent_id))
        # Against the largest context the engine can get: it grows it when the reply is
        # written (checked against the current one, a pasted page was refused; against the
        # model's limit, one that free memory could not hold was stored, then refused).
        messages = history + [{"role": "user", "content": text}]
        reachable = self.engine.reachable_context
        try:
            self.engine.fit_to_context(messages, tree.settings().max_tokens, n_ctx=reachable)
        except PromptTooLong as error:
            if reachable >= self.engine.context_limit:
                raise
            self.engine.fit_to_context(messages, tree.settings().max_tokens,
                                       n_ctx=self.engine.context_limit)   # (raises if not)
            raise PromptTooLong(error.tokens, error.room, error.system_tokens, memory_bound=True) from None
        message = Message(conversation_id=tree.id, role="user", content=text,
                          parent_id=parent_id)
        if not tree.stored:
            if tree.conversation.title == DEFAULT_TITLE:
                tree.conversation.title = _title_from(text)
            self.store.conversations.create(tree.conversation)
            tree.stored = True
        self.store.conversations.add_message(message)
        tree.messages[message.id] = message
        tree.conversation.active_leaf_id = message.id
        if tree.conversation.title == DEFAULT_TITLE:
            self.rename(tree, _title_from(text))
        return message

    def generate_reply(self, tree: ConversationTree, user_message_id: str,
                       on_token: Callable[[str], None] | None = None,
                       cancel: threading.Event | None = None) -> Message:
        """Stream a reply to ``user_message_id`` and commit it (a stopped reply too).

        With a fixed seed, the k-th reply to the same message uses seed + k: the first
        reply is reproducible, and a regenerated or compared reply is a new one rather
        than a copy of its sibling."""
        settings = tree.settings()
        if settings.seed is not None:
            earlier = sum(m.role == "assistant" for m in tree.children(user_message_id))
            settings.seed = (settings.seed + earlier) % 2**32
        history = self._chat_messages(tree, tree.path_to(user_message_id))
        reply: Reply = self.engine.generate(history, settings, on_token=on_token, cancel=cancel)
        message = Message(
            conversation_id=tree.id, role="assistant", content=reply.text,
            parent_id=user_message_id, model=reply.model, settings=reply.settings,
            prompt_tokens=reply.prompt_tokens, tokens=reply.tokens, ttft_s=reply.ttft_s,
            tokens_per_s=reply.tokens_per_s, finish_reason=reply.finish_reason,
            dropped_turns=reply.dropped_turns)
        self.store.conversations.add_message(message)
        tree.messages[message.id] = message
        tree.conversation.active_leaf_id = message.id
        return message

    def send(self, tree: ConversationTree, text: str, **stream) -> tuple[Message, Message]:
        user = self.post_user_message(tree, text)
        return user, self.generate_reply(tree, user.id, **stream)

    def regenerate(self, tree: ConversationTree, assistant_message_id: str, **stream) -> Message:
        """A new reply beside the old one; the old one stays as a sibling."""
        parent = tree.messages[assistant_message_id].parent_id
        return self.generate_reply(tree, parent, **stream)

    def post_edit(self, tree: ConversationTree, user_message_id: str, new_text: str) -> Message:
        """Commit an edited user message: a new branch beside the original."""
        original = tree.messages[user_message_id]
        if original.role != "user":
            raise ValueError("Only your own messages can be edited.")
        return self.post_user_message(tree, new_text, parent_id=original.parent_id)

    def edit(self, tree: ConversationTree, user_message_id: str, new_text: str,
             **stream) -> tuple[Message, Message]:
        """Edit a user message, then reply to the new branch."""
        user = self.post_edit(tree, user_message_id, new_text)
        return user, self.generate_reply(tree, user.id, **stream)

    def record_pick(self, tree: ConversationTree, left_id: str, right_id: str, value: int) -> None:
        """An explicit side-by-side choice between two replies to the same prompt."""
        if tree.messages[left_id].parent_id != tree.messages[right_id].parent_id:
            raise ValueError("a pick compares two replies to the same message")
        self.store.conversations.record_pick(tree.id, left_id, right_id, value)

    def thumb(self, tree: ConversationTree, message_id: str, value: int) -> None:
        self.store.conversations.set_thumb(tree.id, message_id, value)   # (not if incognito)
        if tree.conversation.incognito:
            tree.memory_thumbs[message_id] = value

    @staticmethod
    def _chat_messages(tree: ConversationTree, path: list[Message]) -> list[dict]:
        system = tree.settings().system_prompt.strip()
        turns = [{"role": m.role, "content": m.content} for m in path
                 if m.role in ("user", "assistant") and m.content]
        return ([{"role": "system", "content": system}] if system else []) + turns


def _title_from(text: str, limit: int = 48) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
