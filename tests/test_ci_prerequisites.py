"""The test harness itself: a missing prerequisite skips locally but fails on CI, and the
Xvfb fixture starts a server of its own on a free display or says why it could not."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, free_display_number, require, start_xvfb

USES_REQUIRE = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(ROOT / 'tests')!r})
    from conftest import require

    def test_needs_a_tool():
        require(False, "frobnicator is not installed")

    def test_has_it():
        require(True, "never shown")
""")


def run_pytest(tmp_path, ci: str | None):
    (tmp_path / "test_uses_require.py").write_text(USES_REQUIRE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                           str(tmp_path / "test_uses_require.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_prerequisite_skips_outside_ci(tmp_path):
    result = run_pytest(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "frobnicator is not installed" in result.stdout


def test_a_missing_prerequisite_fails_on_ci(tmp_path):
    result = run_pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert "frobnicator is not installed" in result.stdout


def test_two_servers_get_two_free_displays():
    require(shutil.which("Xvfb") is not None, "Xvfb is not installed")
    first = start_xvfb()
    try:
        second = start_xvfb()
        try:
            assert first[0] != second[0]
            for display, server, _ in (first, second):
                number = display[1:]
                assert server.poll() is None
                assert Path(f"/tmp/.X11-unix/X{number}").exists()
                assert int(Path(f"/tmp/.X{number}-lock").read_text()) == server.pid
            assert free_display_number(int(first[0][1:])) not in (int(first[0][1:]),
                                                                    int(second[0][1:]))
        finally:
            second[1].terminate()
            second[1].wait()
    finally:
        first[1].terminate()
        first[1].wait()


def test_a_server_that_dies_is_reported_with_its_stderr(tmp_path, monkeypatch):
    fake = tmp_path / "Xvfb"
    fake.write_text("#!/bin/sh\necho 'Fatal server error: no screens found' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="no screens found"):
        start_xvfb(attempts=2)


def test_a_server_that_never_serves_its_display_is_not_taken(tmp_path, monkeypatch):
    """Alive is not enough: without its socket and lock file it is not a running server."""
    fake = tmp_path / "Xvfb"
    fake.write_text("#!/bin/sh\necho 'stuck before listening' >&2\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="stuck before listening"):
        start_xvfb(attempts=1, timeout_s=1.0)
