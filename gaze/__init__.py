"""Webcam gaze: camera, MediaPipe landmarks, calibration, smoothing, fixations.

Milestone 1 only reports whether a camera exists (for `glance doctor`); the gaze
pipeline lands in a later issue. No Qt in this package.
"""
