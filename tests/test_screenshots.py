"""Screenshots under Xvfb of the main window, the consent dialog and the privacy panel.

They are saved in artifacts/ for a person to look at (the README shows them)."""
import os
import subprocess
import sys

import pytest
from PySide6.QtGui import QImage

from conftest import ARTIFACTS, ROOT

pytestmark = pytest.mark.xvfb


def distinct_colours(path) -> int:
    image = QImage(str(path))
    step = max(1, image.width() // 80)
    return len({image.pixel(x, y) for x in range(0, image.width(), step)
                for y in range(0, image.height(), step)})


def test_screenshots_on_a_real_x_server(xvfb_display, home):
    env = dict(os.environ, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb", GLANCE_HOME=str(home))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "screens.py"), str(ARTIFACTS)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("main_window.png", "consent_dialog.png", "privacy_panel.png", "compare.png"):
        path = ARTIFACTS / name
        assert path.exists(), name
        image = QImage(str(path))
        assert image.width() > 300 and image.height() > 200
        assert distinct_colours(path) > 20, f"{name} looks blank"
