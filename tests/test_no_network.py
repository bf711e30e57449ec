"""No network, seen from the kernel's side, for all of Glance.

pytest-socket cannot see native code (DuckDB, llama.cpp, Qt), so the real programs run
under ``strace -f -yy -e trace=network`` and every network system call they make is
listed:

* every CLI command, enumerated from the argument parsers (``glance`` and ``align``,
  sub-commands walked recursively). Each leaf command needs a valid invocation in
  INVOCATIONS below; a command added later without one FAILS its test instead of being
  skipped silently.
* the desktop app on a real X server through a whole session (start, consent, chat,
  privacy panel, export, delete a conversation, delete everything).

What counts as network: a socket of any family but AF_UNIX/AF_LOCAL/AF_NETLINK (local
IPC and the kernel's routing socket), an address of such a family in connect, bind,
sendto, sendmsg..., or any call on a file descriptor that ``-yy`` shows as such a socket
(``<TCP:[...]>``, ``<UDP:[...]>``, ``<TCPv6:...>``), so a send on a connected socket
is caught even though the call names no address.

`glance models download` is the one command that opens a connection, and only because
the user asked for it. It is run against an unreachable loopback address (a closed
port on 127.0.0.1, so nothing leaves the machine) under a loopback-only policy: its
attempt to connect there must be seen (proof the command ran and the trace sees it),
and it must make no other network call (no DNS, no IPv6, no other address).
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, nightly_settings, require


@pytest.fixture(autouse=True)
def _needs_strace():
    require(shutil.which("strace") is not None,
            "strace is not installed (scripts/bootstrap.sh installs it)")


# --- reading a trace ----------------------------------------------------------------------
LOCAL_FAMILIES = {"AF_UNIX", "AF_LOCAL", "AF_NETLINK", "AF_UNSPEC"}
FAMILY = re.compile(r"\b(AF_[A-Z0-9]+)\b")
FD_PROTOCOL = re.compile(r"<([A-Z][A-Za-z0-9-]*):\[")
IPV4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")


def is_network(line: str) -> bool:
    if any(family not in LOCAL_FAMILIES for family in FAMILY.findall(line)):
        return True
    return any(not protocol.startswith(("UNIX", "NETLINK"))
               for protocol in FD_PROTOCOL.findall(line))


def is_loopback_tcp(line: str) -> bool:
    """A TCP call that names no address but 127.0.0.1 (a socket() names none; an
    unbound socket's own address reads 0.0.0.0)."""
    if "AF_INET6" in line or re.search(r"<(UDP|RAW|TCPv6|UDPv6)|SOCK_DGRAM|SOCK_RAW", line):
        return False
    return all(address in ("127.0.0.1", "0.0.0.0") for address in IPV4.findall(line))


def traced(args, env, tmp_path, name="strace.txt", timeout=300):
    """Run ``args`` under strace; return (completed process, trace lines)."""
    trace = tmp_path / name
    result = subprocess.run(
        # --seccomp-bpf: only the network calls stop the traced program (torch's threads
        # would otherwise stop at every system call).
        ["strace", "--seccomp-bpf", "-f", "-qq", "-yy", "-e", "trace=network", "-e", "signal=none",
         "-o", str(trace), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return result, trace.read_text().splitlines()


def clean_env(home, **extra) -> dict:
    """The environment of a user's terminal: no display, no proxy, not CI (trl keeps its
    telemetry quiet under CI=true only, so CI alone would hide it), GLANCE_HOME set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "CI")
           and not k.lower().endswith("_proxy")}
    env.update(GLANCE_HOME=str(home), **extra)
    return env


# --- controls: the method sees what it must ---------------------------------------------
CONTROL = r"""
import socket
a, b = socket.socketpair()            # local IPC: not network
a.sendall(b"x"); b.recv(1)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.sendto(b"x", ("127.0.0.1", 9))    # loopback only, harmless
tcp = socket.socket()
try:
    tcp.connect(("127.0.0.1", 9))
except OSError:
    pass
"""


def test_strace_sees_internet_sockets_and_not_local_ipc(home, tmp_path):
    result, lines = traced([sys.executable, "-c", CONTROL], clean_env(home), tmp_path)
    assert result.returncode == 0, result.stderr
    flagged = [line for line in lines if is_network(line)]
    assert any("socket(AF_INET, SOCK_DGRAM" in line for line in flagged)
    # (strace puts the pid first only while it traces more than one process)
    assert any(re.match(r"(\d+ +)?sendto\(\d+<UDP:", line) for line in flagged)
    assert any("connect(" in line and 'inet_addr("127.0.0.1")' in line for line in flagged)
    # The socketpair traffic is in the trace, and is not counted as network.
    local = [line for line in lines if "UNIX-STREAM" in line]
    assert local and not any(is_network(line) for line in local)
    # The loopback-only policy accepts loopback TCP and refuses UDP.
    assert all(is_loopback_tcp(line) for line in flagged if "<TCP" in line or "SOCK_STREAM" in line)
    assert not any(is_loopback_tcp(line) for line in flagged if "UDP" in line or "SOCK_DGRAM" in line)


# --- every CLI command ------------------------------------------------------------------
def programs() -> dict:
    from align.cli import build_parser as align_parser
    from app.cli import build_parser as glance_parser
    return {"glance": (glance_parser(), [sys.executable, "-m", "app.cli"]),
            "align": (align_parser(), [sys.executable, "-m", "align.cli"])}


def leaf_commands(parser: argparse.ArgumentParser, path: tuple) -> list[tuple]:
    """Every command path that runs something: parsers without sub-commands, and
    parsers whose sub-command is optional (``glance`` alone is the desktop app)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found = [] if groups and all(g.required for g in groups) else [path]
    for group in groups:
        seen = set()
        for name, child in group.choices.items():
            if id(child) not in seen:  # an alias names the same parser again
                seen.add(id(child))
                found += leaf_commands(child, path + (name,))
    return found


def all_leaf_commands() -> list[tuple]:
    return [leaf for name, (parser, _) in programs().items()
            for leaf in leaf_commands(parser, (name,))]


# One or more valid invocations (arguments after the program) per leaf command.
# {conversation}: a stored conversation id; {model}: a GGUF; {export}, {out}, {subset}:
# folders to write; {ifllm}: a small IFLLM folder cut from ../shared/ifllm; {worker}: one
# of its workers.
INVOCATIONS = {
    # Without a display the window cannot open and glance says so (exit 2); the window
    # itself is traced in test_desktop_session_opens_no_network.
    ("glance",): [[], ["--version"]],
    ("glance", "chat"): [
        ["chat", "--prompt", "hi", "--max-tokens", "4", "--json"],
        ["chat", "--prompt", "and again", "--conversation", "{conversation}", "--model",
         "{model}", "--seed", "1", "--max-tokens", "4", "--temperature", "0.5",
         "--top-p", "0.9"]],
    ("glance", "conversations"): [["conversations"], ["conversations", "--json", "--search", "seeded"]],
    ("glance", "doctor"): [["doctor"], ["doctor", "--json"]],
    ("glance", "models", "list"): [["models", "list"]],
    ("glance", "models", "add"): [["models", "add", "{model}"]],
    ("glance", "models", "remove"): [["models", "remove", "{model}"]],
    ("glance", "models", "download"): [
        ["models", "download", "owner/repo", "model.gguf", "--sha256", "0" * 64]],
    ("glance", "data", "status"): [["data", "status"], ["data", "status", "--json"]],
    ("glance", "data", "export"): [["data", "export", "{export}"]],
    ("glance", "data", "delete"): [["data", "delete", "--conversation", "{conversation}"],
                                   ["data", "delete", "--all", "--yes"]],
    ("glance", "consent", "set"): [["consent", "set", "pointer", "on"],
                                   ["consent", "set", "gaze", "off"]],
    ("align",): [[], ["--help"], ["--nightly", "--json"]],
    ("align", "reward"): [["reward"]],
    ("align", "reward", "train"): [["reward", "train", "--ifllm", "{ifllm}", "--out", "{out}",
                                    "--json"]],
    ("align", "reward", "evaluate"): [["reward", "evaluate", "--ifllm", "{ifllm}", "--seeds", "1",
                                       "--folds", "2", "--json"]],
    ("align", "reward", "scores"): [["reward", "scores"], ["reward", "scores", "--limit", "3",
                                                          "--json"]],
    ("align", "ifllm-subset"): [["ifllm-subset", "{ifllm}", "{subset}", "--workers", "{worker}"]],
    ("align", "import-ifllm"): [["import-ifllm", "{ifllm}", "--json"],
                                ["import-ifllm", "{ifllm}", "--remove"]],
    ("align", "status"): [["status"], ["status", "--json"]],
    ("align", "adapters"): [["adapters"]],
    ("align", "adapters", "list"): [["adapters", "list", "--json"]],
    ("align", "adapters", "use"): [["adapters", "use", "base", "--json"]],
    ("align", "rollback"): [["rollback", "--json"]],
    ("align", "schedule"): [["schedule", "status", "--json"]],
}
# Exit codes other than 0 that are the right answer for a valid invocation.
# Keyed by (command, index of the invocation).
EXPECTED_EXIT = {(("glance",), 0): 2,                         # no display
                 (("glance", "models", "download"), 0): 2,    # the hub is unreachable
                 (("glance", "models", "remove"), 0): 2,      # not in this folder's list
                 (("align", "reward"), 0): 2}                 # no subcommand: help, as an error
DOWNLOADS = {("glance", "models", "download")}


def test_every_table_entry_is_a_real_command():
    assert set(INVOCATIONS) <= set(all_leaf_commands())


def test_a_new_command_without_an_invocation_is_caught():
    """The enumeration sees sub-commands added later, and they have no entry."""
    from align.cli import build_parser

    def missing(parser):
        return {leaf for leaf in leaf_commands(parser, ("align",)) if leaf not in INVOCATIONS}
    parser = build_parser()
    before = missing(parser)
    group = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    nightly = group.add_parser("nightly")
    nightly.add_subparsers(dest="what", required=True).add_parser("train")
    leaves = leaf_commands(parser, ("align",))
    assert ("align", "nightly", "train") in leaves
    assert ("align", "nightly") not in leaves  # its sub-command is required
    assert missing(parser) - before == {("align", "nightly", "train")}


@pytest.fixture
def seeded_home(home):
    """A data folder with one stored conversation (made through the library)."""
    from feedback_store import Conversation, FeedbackStore, Message
    with FeedbackStore.open(home) as store:
        conversation = Conversation(title="seeded chat")
        store.conversations.create(conversation)
        store.conversations.add_message(Message(conversation_id=conversation.id, role="user",
                                                content="seeded question"))
    nightly_settings(home)
    return home, conversation.id


IFLLM = ROOT.parent / "shared" / "ifllm"
# Four of the workers tests/test_reward.py reads: both tasks, read in a second.
IFLLM_WORKERS = ["worker_1a68b95d", "worker_129661d9", "worker_a2b63b0c", "worker_01e1127e"]


@pytest.fixture(scope="module")
def ifllm_small(tmp_path_factory):
    require((IFLLM / "samples.parquet").exists(),
            f"IFLLM study data not found at {IFLLM} (see ../shared/ifllm/README.md)")
    from align.ifllm import write_subset
    target = tmp_path_factory.mktemp("ifllm") / "small"
    write_subset(IFLLM, target, IFLLM_WORKERS)
    return target


@pytest.fixture
def closed_loopback_port():
    """A port on 127.0.0.1 that nothing listens on: the download's 'unreachable hub'."""
    with socket.socket() as probe:  # pytest-socket allows it for this fixture's test
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
@pytest.mark.timeout(600)
@pytest.mark.parametrize("command", all_leaf_commands(), ids=" ".join)
def test_cli_command_opens_no_network(command, seeded_home, closed_loopback_port, tmp_path,
                                      request):
    assert command in INVOCATIONS, (
        f"`{' '.join(command)}` is a command with no invocation in INVOCATIONS "
        f"({__file__}): add a valid one so its network use is traced")
    from app.models import default_model_path
    home, conversation_id = seeded_home
    program = programs()[command[0]][1]
    values = {"conversation": conversation_id, "model": str(default_model_path()),
              "export": str(tmp_path / "export"), "out": str(tmp_path / "out"),
              "subset": str(tmp_path / "subset"), "worker": IFLLM_WORKERS[0]}
    if any("{ifllm}" in a for arguments in INVOCATIONS[command] for a in arguments):
        values["ifllm"] = str(request.getfixturevalue("ifllm_small"))
    env = clean_env(home, GLANCE_HF_ENDPOINT=f"http://127.0.0.1:{closed_loopback_port}",
                    GLANCE_CACHE_DIR=str(tmp_path / "cache"))
    for index, arguments in enumerate(INVOCATIONS[command]):
        argv = [a.format(**values) for a in arguments]
        result, lines = traced(program + argv, env, tmp_path, f"strace-{index}.txt")
        shown = f"{' '.join(command[:1] + tuple(argv))}: {result.stderr[-1500:]}"
        assert "Traceback" not in result.stderr, shown
        assert result.returncode == EXPECTED_EXIT.get((command, index), 0), shown
        network = [line for line in lines if is_network(line)]
        if command not in DOWNLOADS:
            assert network == [], shown
            continue
        # Loopback-only policy: the attempt on the unreachable hub, and nothing else.
        assert [line for line in network if not is_loopback_tcp(line)] == [], shown
        assert any("connect(" in line and f"htons({closed_loopback_port})" in line
                   and 'inet_addr("127.0.0.1")' in line for line in network), shown
        assert "Could not reach the model hub" in result.stderr, shown


# --- a nightly run that trains ----------------------------------------------------------
@pytest.mark.timeout(1800)
def test_nightly_training_opens_no_network(home, tmp_path):
    """`align --nightly` above runs on a folder with nothing to learn; here it is a user's
    first night: it converts the GGUF to a checkpoint, trains, gates and publishes an
    adapter, so torch, transformers, trl, peft and datasets are all loaded and used
    (trl's trainer posts telemetry to the hub unless told not to)."""
    from nightly_support import require_training, seed_home
    require_training()
    seed_home(home)
    env = clean_env(home, GLANCE_CHECKPOINT_CACHE=str(tmp_path / "checkpoints"))
    result, lines = traced([sys.executable, "-m", "align.cli", "--nightly", "--json"], env,
                           tmp_path, timeout=1700)
    shown = result.stderr[-3000:]
    assert result.returncode == 0, shown
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["trained"], outcome            # the trainer really ran
    assert [line for line in lines if is_network(line)] == [], shown


# --- gaze: camera frames through MediaPipe --------------------------------------------------
GAZE_RUN = r"""
import sys
from gaze import synthetic
from gaze.tracker import GazeTracker
path, _ = synthetic.astronaut_video(sys.argv[1], frames_per_segment=10)
tracker = GazeTracker(str(path), realtime=False)
tracker.start()
assert tracker.wait_finished(240) and tracker.stop()
print(tracker.stats()["faces_found"])
"""


@pytest.mark.timeout(600)
def test_gaze_tracking_opens_no_network(home, tmp_path):
    """The webcam side: frames from a video file (the tracker's replay camera) through
    OpenCV and MediaPipe's face mesh. Later MediaPipe releases report usage to Google's
    servers (docs/privacy.md); the pinned one must not."""
    require(importlib.util.find_spec("mediapipe") is not None
            and importlib.util.find_spec("cv2") is not None, "the gaze extra is not installed")
    result, lines = traced([sys.executable, "-c", GAZE_RUN, str(tmp_path / "face.avi")],
                           clean_env(home), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 0     # faces were really tracked
    assert [line for line in lines if is_network(line)] == [], result.stderr[-3000:]


# --- the desktop app through a whole session -----------------------------------------------
@pytest.mark.xvfb
@pytest.mark.timeout(900)
def test_desktop_session_opens_no_network(xvfb_display, home, tmp_path):
    from feedback_store import FeedbackStore
    from conftest import quick_settings
    with FeedbackStore.open(home) as store:  # short replies; consent is still to be asked
        store.settings.set("generation", quick_settings().to_dict())
    log, export = tmp_path / "session.jsonl", tmp_path / "export"
    env = clean_env(home, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb",
                    GLANCE_SESSION_LOG=str(log), GLANCE_SESSION_EXPORT=str(export))
    result, lines = traced([sys.executable, str(ROOT / "tests" / "desktop_session.py")],
                           env, tmp_path, timeout=800)
    steps = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    shown = f"steps={steps}\nstderr={result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    by_step = {step["step"]: step for step in steps}
    assert [s["step"] for s in steps] == ["consent", "chat", "privacy panel", "export",
                                          "delete conversation", "delete everything",
                                          "exit"], shown
    assert by_step["chat"]["reply"] and by_step["chat"]["stored"] == 2, shown
    assert "Your data is in" in by_step["export"]["message"], shown
    (exported,) = export.iterdir()
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["tables"]["messages"]["rows"] == 2
    assert by_step["delete conversation"]["error"] is None, shown
    assert by_step["delete conversation"]["left"] == [], shown
    assert by_step["exit"]["code"] == 0
    assert not (home / "glance.db").exists() and not (home / "glance.key").exists()
    # The trace followed the app: it saw the app talk to the X server over its socket.
    assert any(f".X11-unix/X{xvfb_display[1:]}" in line for line in lines)
    assert [line for line in lines if is_network(line)] == [], shown
