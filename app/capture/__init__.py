"""Interaction capture without Qt: the recorder that maps screen points to words and
batches them into the store, and the global pointer / hotkey hooks (pynput)."""
