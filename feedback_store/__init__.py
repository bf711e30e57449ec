"""The only owner of Glance's database.

Everything that writes goes through :class:`FeedbackStore`: one writer thread owns the
write connection, producers submit to a bounded queue, and consent / incognito rules are
enforced here rather than in the UI. No Qt in this package.
"""
from .duckdb_import import without_package_metadata

without_package_metadata()              # before anything here imports duckdb
from .errors import (
    StoreError, DatabaseLocked, SchemaTooNew, WrongKey, MissingKey, KeyringLocked,
    KeyringUnavailable, KeyringKeepsKey,
    DataDirUnwritable, ConsentRequired, UnknownConversation, NoGlanceData,
)
from .paths import glance_home
from .samples import GazeSample, MalformedSample, PointerSample, ReplyAction, ViewportEvent
from .signals import CONSENT_TEXT_VERSION, SIGNALS, Signal
from . import tables
from .store import Conversation, FeedbackStore, Message

__all__ = [
    "FeedbackStore", "Message", "Conversation", "glance_home", "SIGNALS", "Signal",
    "CONSENT_TEXT_VERSION", "PointerSample", "GazeSample", "ViewportEvent", "ReplyAction", "MalformedSample", "StoreError",
    "DatabaseLocked", "SchemaTooNew", "WrongKey", "MissingKey", "KeyringLocked", "KeyringUnavailable",
    "KeyringKeepsKey",
    "DataDirUnwritable", "ConsentRequired", "UnknownConversation", "NoGlanceData",
]
