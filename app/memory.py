"""Keep Python's garbage collector off the UI thread's critical path.

A full (generation 2) collection scans every tracked object. With Qt, llama.cpp, DuckDB
and, once gaze is on, MediaPipe loaded that is ≈ 180 k objects and 13–36 ms, paid by
whichever thread happens to allocate at that moment, often the UI thread
(bench/gaze.py measured a 57 ms UI timer gap that way). What is alive once the window is
up (modules, the window, the model) lives as long as the app, so it is moved where the
collector no longer scans it (``gc.freeze``, a constant-time move). No collection first:
that would be the very pause this avoids (50 ms measured); the little garbage frozen
with it is never freed.
"""
import gc


def freeze_long_lived() -> None:
    gc.freeze()
