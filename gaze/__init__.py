"""Webcam gaze: camera, MediaPipe face mesh, features, calibration, fixations. No Qt.

``gaze.tracker.GazeTracker`` is what the app uses (docs/gaze.md). Importing this package
or any module in it loads neither OpenCV nor MediaPipe: they are imported on the
tracker's threads when a camera is opened.

    camera.py       capture thread on cv2.VideoCapture (device or video file), presence
    landmarks.py    MediaPipe 0.10.21 face mesh (tracking mode, iris landmarks)
    features.py     head pose (Procrustes), eye features in the head frame, EAR
    filters.py      blink detector, One-Euro filter
    calibration.py  targets, regression (ridge / kernel ridge / MLP), validation, saving,
                    click recalibration and drift
    geometry.py     screen pixels ↔ millimetres ↔ degrees
    fixations.py    online I-DT fixations, saccade kinds, fixations as GazePoints
    tracker.py      GazeTracker: the pipeline on two threads, health states
    points.py       GazePoint, Health
    synthetic.py    astronaut video with known motion, reading scanpaths (tests, bench)
    simulate.py     a simulated user's face mesh with known gaze (calibration figures)
"""
