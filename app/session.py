"""What the window needs from the store, without Qt: the app session, which replies are
on screen, what is being recorded right now, and the store jobs that take time.

The window calls this and ChatService; it never touches the store itself. Everything
here is tested without a screen (tests/test_session.py).
"""
from dataclasses import dataclass

from feedback_store import SIGNALS, FeedbackStore

from . import __version__


@dataclass(frozen=True)
class ReplyOnScreen:
    """What a reply looked like when it was laid out: screen geometry and line boxes."""
    message_id: str
    conversation_id: str
    geometry: tuple[int, int, int, int]
    device_pixel_ratio: float
    rendered_text: str
    line_boxes: list[dict]


@dataclass(frozen=True)
class RecordingState:
    text: str            # the status-bar indicator
    camera_on: bool      # red dot in window and tray
    recording: tuple[str, ...]   # signals really being recorded now


class AppSession:
    def __init__(self, store: FeedbackStore, screen: dict | None = None):
        self.store = store
        self.id = store.samples.start_session(__version__, screen)
        self._shown: dict[str, str] = {}          # message id -> shown_replies id
        self.collectors: dict[str, object] = {}   # signal -> running capture

    # --- replies on screen -------------------------------------------------------------
    def shown_id(self, message_id: str) -> str | None:
        return self._shown.get(message_id)

    def reply_shown(self, reply: ReplyOnScreen) -> str | None:
        """Record a reply as shown, once per showing (re-rendering is not a new showing).
        Queued, never waited for; samples that name the id are written after it."""
        if reply.message_id in self._shown:
            return self._shown[reply.message_id]
        shown_id = self.store.samples.record_shown_reply(
            session_id=self.id, message_id=reply.message_id,
            conversation_id=reply.conversation_id, geometry=reply.geometry,
            device_pixel_ratio=reply.device_pixel_ratio, rendered_text=reply.rendered_text,
            layout=reply.line_boxes, wait=False)
        if shown_id:
            self._shown[reply.message_id] = shown_id
        return shown_id

    def reply_moved(self, reply: ReplyOnScreen) -> None:
        shown_id = self._shown.get(reply.message_id)
        if shown_id:
            self.store.samples.update_shown_geometry(shown_id, reply.geometry, reply.line_boxes)

    def shown_ids(self) -> dict[str, str]:
        return dict(self._shown)

    def record(self, rows: list) -> bool:
        """Viewport events and reply actions (consent is enforced by the store)."""
        return self.store.samples.submit(rows)

    def replies_hidden(self, keep: set[str] = frozenset()) -> list[str]:
        """Replies that left the screen get their hidden time; returns their message ids."""
        gone = [m for m in self._shown if m not in keep]
        for message_id in gone:
            self.store.samples.mark_reply_hidden(self._shown.pop(message_id))
        return gone

    # --- what is recorded -----------------------------------------------------------------
    def set_collector(self, signal: str, collector) -> None:
        if collector is None:
            self.collectors.pop(signal, None)
        else:
            self.collectors[signal] = collector

    def recording_state(self, incognito: bool) -> RecordingState:
        """Only collectors that really run, with consent, outside pause and incognito,
        count as recording."""
        consent = self.store.consent
        running = tuple(s for s in SIGNALS if self.collectors.get(s) and consent.is_on(s)
                        and not consent.paused and not incognito)
        camera_on = bool(self.collectors.get("gaze")) and consent.is_on("gaze") \
            and not consent.paused
        if consent.paused:
            text = "Recording paused"
        elif running:
            text = "Recording: " + ", ".join(SIGNALS[s].indicator for s in running)
        else:
            text = "Not recording"
        return RecordingState(text, camera_on, running)

    def toggle_pause(self) -> bool:
        self.store.consent.set_paused(not self.store.consent.paused)
        return self.store.consent.paused

    # --- store jobs that take time (run off the UI thread by the caller) -------------------
    def delete_conversation(self, conversation_id: str) -> None:
        self.store.delete_conversation(conversation_id)

    def export(self, directory: str, progress=None):
        from feedback_store.privacy import export_all
        return export_all(self.store, directory, progress=progress)

    def apply_retention(self) -> None:
        self.store.apply_retention(wait=False)

    # --- models and defaults ---------------------------------------------------------------
    def known_models(self) -> list[dict]:
        return self.store.models.list()

    def remember_model(self, info: dict) -> None:
        self.store.models.remember(info)

    def remember_default_settings(self, settings: dict) -> None:
        self.store.settings.set("generation", settings)
