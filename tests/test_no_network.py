"""No network, seen from the kernel's side: pytest-socket cannot see native code (DuckDB,
llama.cpp), so run the real commands under strace and list their network syscalls."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="strace is not installed (scripts/bootstrap.sh installs it)")

NETWORK_CALL = re.compile(r"\b(socket|connect|sendto|sendmsg|bind)\((?!AF_UNIX|AF_LOCAL|\{sa_family=AF_UNIX)")


def network_calls(args, home, tmp_path) -> list[str]:
    trace = tmp_path / "strace.txt"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=network", "-o", str(trace), *args],
                   env=dict(os.environ, GLANCE_HOME=str(home)), cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    return [line for line in trace.read_text().splitlines() if NETWORK_CALL.search(line)]


def test_strace_sees_network_calls(home, tmp_path):
    """Control: the method does catch a program that opens an internet socket."""
    calls = network_calls([sys.executable, "-c", "import socket; socket.socket()"], home, tmp_path)
    assert any("AF_INET" in call for call in calls)


def test_chat_and_data_commands_open_no_network(home, tmp_path):
    glance = [sys.executable, "-m", "app.cli"]
    assert network_calls(glance + ["chat", "--prompt", "hi", "--max-tokens", "4", "--json"],
                         home, tmp_path) == []
    assert network_calls(glance + ["data", "status", "--json"], home, tmp_path) == []
    assert network_calls(glance + ["doctor", "--json"], home, tmp_path) == []
    assert network_calls([sys.executable, "-m", "align.cli"], home, tmp_path) == []
