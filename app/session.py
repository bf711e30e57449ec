"""What the window needs from the store, without Qt: the app session, which replies are
on screen, what is being recorded right now, and the store jobs that take time.

The window calls this and ChatService; it never touches the store itself. Everything
here is tested without a screen (tests/test_session.py).
"""
from dataclasses import dataclass
from pathlib import Path

from feedback_store import SIGNALS, FeedbackStore
from feedback_store.times import local_minute

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
class AdapterState:
    """The personal adapter as the status bar shows it."""
    text: str
    tooltip: str
    available: bool      # a published version fits the loaded model (the toggle is usable)
    enabled: bool        # the user wants it (off: chat with the base model)


def describe_adapter(active: dict | None, enabled: bool,
                     load_error: str | None = None) -> AdapterState:
    """What the next reply will come from: the active published adapter (from
    ``align.adapters.active_adapter``), or the base model and why (``load_error``: the
    engine could not load it)."""
    if active is None:
        return AdapterState("Base model", "No personal adapter yet for this model: the nightly "
                            "job (align --nightly) trains one from the replies you rated, "
                            "compared and read, with your consent.", False, enabled)
    when = local_minute(active.get("created_wall_ns") or 0)
    from align.adapters import trained_pairs
    pairs = trained_pairs(active)
    learned = f" from {pairs} preference pairs" if pairs is not None else ""
    tooltip = f"Personal adapter {active['version']}, trained {when}{learned}."
    if not enabled:
        return AdapterState(f"Base model (personal {active['version']} off)",
                            tooltip + " Switched off: replies come from the base model.", True, False)
    if load_error:
        return AdapterState(f"Base model (personal {active['version']} did not load)",
                            tooltip + " " + load_error, True, True)
    return AdapterState(f"Personal {active['version']}", tooltip, True, True)


@dataclass(frozen=True)
class RecordingState:
    text: str            # the status-bar indicator
    camera_on: bool      # red dot in window and tray
    recording: tuple[str, ...]   # signals really being recorded now


def delete_conversation(store: FeedbackStore, conversation_id: str, training_link=None) -> None:
    """Delete a conversation (store: rows, compaction under a new key), then retire every
    reward model and personal adapter that learned from it (docs/nightly.md §8). The
    window and ``glance data delete`` both come here."""
    try:
        store.delete_conversation(conversation_id)
    finally:    # deleted even when its compaction failed: no adapter may keep it either
        if training_link is not None:
            training_link.tidy(deleted=True)  # also tells the window the active version changed
        else:                             # (glance data delete: the window is not open)
            from .training_link import tidy_training
            tidy_training(store, store.data_dir, deleted=True)


def personal_adapter_wanted(store) -> bool:
    """The window's *Personal* toggle: chat through the published adapter (the default)."""
    return bool(store.settings.get("use_personal_adapter", True))


class AppSession:
    def __init__(self, store: FeedbackStore, screen: dict | None = None):
        self.store = store
        self.id = store.samples.start_session(__version__, screen)
        self._shown: dict[str, str] = {}          # message id -> shown_replies id
        self.collectors: dict[str, object] = {}   # signal -> running capture
        self.cameras_closing: set = set()          # stopped cameras not closed yet (red dot)
        self.training_link = None                 # app.training_link.TrainingLink once started
        from align.scoring import ReplyScorer
        # Each reply that leaves the screen is scored by the installed reward model.
        self.scorer = ReplyScorer(store)

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
        if self.store.closed:       # everything was deleted: nothing left to mark or score
            self._shown.clear()
            return []
        gone = [m for m in self._shown if m not in keep]
        for message_id in gone:
            shown_id = self._shown.pop(message_id)
            self.store.samples.mark_reply_hidden(shown_id)
            self.scorer.submit(shown_id)      # read, so the reward model can judge it
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
        # The dot shows the camera, not the permission: a camera still closing after a
        # pause or a withdrawn consent is on until it has closed (its points are not used).
        camera_on = bool(self.collectors.get("gaze")) or bool(self.cameras_closing)
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
        self.scorer.forget_conversation(conversation_id)
        delete_conversation(self.store, conversation_id, self.training_link)

    def export(self, directory: str, progress=None):
        from feedback_store.privacy import export_all
        return export_all(self.store, directory, progress=progress)

    def apply_retention(self) -> None:
        self.store.apply_retention(wait=False)

    # --- the nightly job and the personal adapter ------------------------------------------
    @property
    def adapters_dir(self) -> Path:
        from align.adapters import adapters_dir
        return adapters_dir(self.store.data_dir)

    def start_training_link(self, model_path, idle_seconds=None, on_adapters_changed=None) -> str | None:
        """Answer the nightly job on the data folder's private socket while the app runs
        (app/training_link.py). Returns a problem to show, or None."""
        from .training_link import TrainingLink
        try:
            link = TrainingLink(self.store, model_path=model_path, idle_seconds=idle_seconds,
                                on_adapters_changed=on_adapters_changed, scoring=self.scorer.state)
            self.training_link = link.start()
        except (RuntimeError, OSError) as error:     # (OSError: ipc.LinkUnavailable too)
            return (f"The nightly personalisation cannot talk to this window ({error}); it will "
                    "wait for the database instead.")
        return None

    def close(self) -> None:
        """Stop the session's threads (the window calls this when it closes)."""
        if self.training_link is not None:
            self.training_link.stop()
            self.training_link = None
        self.scorer.stop()

    def adapter_state(self, model_path: str | None, enabled: bool,
                      load_error: str | None = None) -> AdapterState:
        from align.adapters import active_adapter
        active = active_adapter(self.adapters_dir, model_path) if model_path else None
        return describe_adapter(active, enabled, load_error)

    def use_personal_adapter(self) -> bool:
        return personal_adapter_wanted(self.store)

    def set_use_personal_adapter(self, enabled: bool) -> None:
        self.store.settings.set("use_personal_adapter", bool(enabled))

    # --- the window's place -----------------------------------------------------------------
    def window_layout(self) -> dict:
        return dict(self.store.settings.get("window_layout") or {})

    def remember_window_layout(self, layout: dict) -> None:
        if not self.store.closed:        # (after "Delete everything" the window closes last)
            self.store.settings.set("window_layout", layout)

    # --- models and defaults ---------------------------------------------------------------
    def known_models(self) -> list[dict]:
        return self.store.models.list()

    def remember_model(self, info: dict) -> None:
        self.store.models.remember(info)

    def forget_model(self, path: str) -> None:
        """Off the list (the file, if any, stays)."""
        self.store.models.forget(path)

    def remember_default_settings(self, settings: dict) -> None:
        self.store.settings.set("generation", settings)
