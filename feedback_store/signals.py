"""The signals a user can opt into: one record each, read by the consent dialog, the
privacy panel, the recording indicator and the store's enforcement.

Bump CONSENT_TEXT_VERSION whenever the wording shown to the user changes in substance:
every stored decision carries the version it was made under, and a decision made under
an older text no longer counts, so the user is asked again.
"""
from dataclasses import dataclass

CONSENT_TEXT_VERSION = 1


@dataclass(frozen=True)
class Signal:
    key: str
    title: str            # plain text; the UI escapes it
    consent_text: str     # what is recorded, in plain language (may hold <b> emphasis)
    tables: tuple[str, ...]  # sample tables that need this consent
    indicator: str        # word for the recording indicator ("mouse", "camera")


SIGNALS: dict[str, Signal] = {s.key: s for s in (
    Signal("pointer", "Mouse & interaction signals",
           "Where the pointer is over a reply (screen coordinates and the word under it), "
           "scrolling, which text you select (positions, not a copy), and the timing of "
           "your typing, never which keys. Kept 90 days by default.",
           ("pointer_samples", "viewport_events", "reply_actions"), "mouse"),
    Signal("gaze", "Webcam gaze",
           "Where on the screen your eyes look while a reply is shown, computed on this "
           "computer from the webcam. <b>No image or video is ever stored</b>, only the "
           "computed points. A red dot shows whenever the camera is on.",
           ("gaze_samples",), "camera"),
    Signal("personalise", "Personalise the model at night",
           "Use your conversations and the signals above to train a small add-on "
           "(a LoRA adapter) to the local model overnight, so answers suit you better. "
           "Training runs on this computer; the adapter never leaves it.",
           (), "training"),
)}

# Which consent a sample table needs (derived, never written by hand).
SAMPLE_TABLE_SIGNAL = {table: s.key for s in SIGNALS.values() for table in s.tables}
