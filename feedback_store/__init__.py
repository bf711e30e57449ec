"""The only owner of Glance's database.

Everything that writes goes through :class:`FeedbackStore`: one writer thread owns the
write connection, producers submit to a bounded queue, and consent / incognito rules are
enforced here rather than in the UI. No Qt in this package.
"""
from .errors import (
    StoreError, DatabaseLocked, SchemaTooNew, WrongKey, MissingKey, KeyringLocked,
    DataDirUnwritable, ConsentRequired,
)
from .paths import glance_home
from .store import FeedbackStore, Message, Conversation
from .consent import SIGNALS, CONSENT_TEXT_VERSION

__all__ = [
    "FeedbackStore", "Message", "Conversation", "glance_home", "SIGNALS",
    "CONSENT_TEXT_VERSION", "StoreError", "DatabaseLocked", "SchemaTooNew", "WrongKey",
    "MissingKey", "KeyringLocked", "DataDirUnwritable", "ConsentRequired",
]
