"""The signals a user can opt into, and the version of the text that explains them.

Bump CONSENT_TEXT_VERSION whenever the wording shown to the user changes in substance:
every stored decision carries the version it was made under, and a decision made under
an older text no longer counts, so the user is asked again.
"""
CONSENT_TEXT_VERSION = 1

# signal -> (short name, what is recorded)
SIGNALS = {
    "pointer": "Mouse & interaction signals",
    "gaze": "Webcam gaze",
    "personalise": "Personalise the model at night",
}

# Which consent a sample table needs.
SAMPLE_TABLE_SIGNAL = {"pointer_samples": "pointer", "gaze_samples": "gaze"}
