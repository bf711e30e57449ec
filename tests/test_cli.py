"""The `glance` command line, run as a real subprocess."""
import json
import os
import signal
import subprocess
import sys
import time

from feedback_store import FeedbackStore
from conftest import ROOT, nightly_settings, run_glance


def test_chat_json_then_continue(home):
    def chat(*args):
        done = run_glance("chat", *args, "--json", home=home)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])
    story = "Write a long story about a lighthouse."
    result = chat("--prompt", story, "--seed", "1", "--max-tokens", "3")
    assert {"reply", "conversation_id", "message_id", "model", "tokens", "ttft_s",
            "tokens_per_s"} <= set(result)
    # The flags reach the turn: cut at 3 tokens (the default runs on), and the same seed
    # gives the same reply in a new chat.
    assert result["reply"] and result["tokens"] <= 3 and result["finish_reason"] == "length"
    assert chat("--prompt", story, "--seed", "1", "--max-tokens", "3")["reply"] == result["reply"]
    again = chat("--prompt", "And again?", "--conversation", result["conversation_id"],
                 "--max-tokens", "2")
    assert again["conversation_id"] == result["conversation_id"]
    assert again["tokens"] <= 2 and again["finish_reason"] == "length"
    with FeedbackStore.open(home) as store:
        messages = store.conversations.messages(result["conversation_id"])
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        by_id = {m.id: m for m in messages}
        question = by_id[by_id[again["message_id"]].parent_id]
        assert question.content == "And again?" and question.parent_id == result["message_id"]
        # The flags were for those turns: the chat keeps its own settings (the first
        # turn's --max-tokens 16 and --seed 1 became the new chat's, for every later
        # reply in the window too).
        from app.engine import GenerationSettings
        settings = store.conversations.get(result["conversation_id"]).settings
        assert GenerationSettings.from_dict(settings) == GenerationSettings.from_dict({})


def test_ctrl_c_stops_the_reply_and_keeps_it_as_the_window_does(home):
    """Ctrl-C in `glance chat` lost the reply written so far and left the question
    unanswered: the next turn of the conversation sent two user messages in a row."""
    chat = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", "--prompt", "Write a long story about a lighthouse.",
         "--max-tokens", "400", "--seed", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, env=dict(os.environ, GLANCE_HOME=str(home)))
    printed = chat.stdout.read(20)                     # the reply is streaming
    chat.send_signal(signal.SIGINT)
    out, err = chat.communicate(timeout=120)
    assert chat.returncode == 0, err
    assert "stopped" in err
    with FeedbackStore.open(home) as store:
        [conversation] = store.conversations.list()
        messages = store.conversations.messages(conversation.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    kept = messages[1]
    assert kept.content.startswith(printed.strip()[:10]) and kept.finish_reason == "cancelled"
    assert kept.tokens < 400


def test_ctrl_c_while_the_model_loads_stops_before_the_reply(home, monkeypatch, capsys):
    """While llama.cpp loads a model, Python runs only inside llama-cpp's log callback, and
    a KeyboardInterrupt raised in a ctypes callback is printed and dropped: Ctrl-C during
    the load was lost and the whole reply ran. Here the signal lands in a real ctypes
    callback at the start of the load, as it does in llama-cpp's."""
    import ctypes
    from app.cli import main as glance
    from app.engine import ChatEngine
    real_llama = ChatEngine._llama

    def interrupted_while_loading(self, path, n_ctx):
        ctypes.CFUNCTYPE(None)(lambda: os.kill(os.getpid(), signal.SIGINT))()
        return real_llama(self, path, n_ctx)
    monkeypatch.setattr(ChatEngine, "_llama", interrupted_while_loading)
    code = glance(["chat", "--prompt", "Write a long story about a lighthouse.",
                   "--max-tokens", "40"])
    out, err = capsys.readouterr()
    assert code == 130 and "stopped while the model loaded" in err and out == ""
    with FeedbackStore.open(home) as store:
        assert store.counts()["messages"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_output_into_a_closed_pipe_is_not_a_traceback(home):
    """`glance doctor | head -1`: the reader closes the pipe before the command has
    written all; that ended in a BrokenPipeError traceback."""
    for command in (["app.cli", "doctor"], ["align.cli", "status"]):
        process = subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, GLANCE_HOME=str(home)))
        process.stdout.close()                   # gone before anything was written
        err = process.stderr.read()
        assert process.wait(timeout=120) == 1, err
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_commands_that_only_read_or_refuse_make_no_data_folder(home, tmp_path):
    """In a data folder Glance was never used with, or right after Delete everything, a
    command that only reads (or refuses its arguments) made a database and a key there."""
    fake = tmp_path / "fake.gguf"
    fake.write_text("nope")
    for args, code, says in (
            (["conversations"], 0, "No conversations yet."),
            (["models", "list"], 0, "(embedded default)"),
            (["models", "remove", str(fake)], 2, "not in the list"),
            (["data", "status"], 0, "No Glance data in"),
            (["data", "status", "--json"], 0, '"exists": false'),
            (["data", "export", str(tmp_path / "out")], 2, "no Glance data"),
            (["data", "delete", "--conversation", "abc"], 2, "no Glance data"),
            (["chat", "--prompt", "hi", "--conversation", "abc"], 2, "abc"),
            (["chat", "--prompt", "hi", "--model", str(fake)], 2, "not a GGUF")):
        done = run_glance(*args, home=home)
        assert done.returncode == code, (args, done.stderr)
        assert says in done.stdout + done.stderr, (args, done.stdout, done.stderr)
        assert not home.exists(), args
    assert not (tmp_path / "out").exists()
    # The embedded default is listed, but it comes with Glance: said so, not "not in the list".
    default = run_glance("models", "list", home=home).stdout.split()[1]
    refused = run_glance("models", "remove", default, home=home)
    assert refused.returncode == 2 and "embedded default" in refused.stderr


def test_chat_says_when_the_personal_adapter_does_not_load(home):
    """A damaged published adapter: the window says so in its status bar, while `glance
    chat` answered with the base model without a word (and the doctor says it is used)."""
    from align.adapters import base_identity
    from app.models import default_model_path
    FeedbackStore.open(home).close()
    version = home / "adapters" / "v0001"
    version.mkdir(parents=True)
    (version / "adapter.gguf").write_bytes(b"not a GGUF file")
    (version / "manifest.json").write_text(json.dumps({"base": base_identity(default_model_path())}))
    (home / "adapters" / "active.json").write_text(json.dumps({"version": "v0001", "counter": 1}))
    done = run_glance("chat", "--prompt", "hi", "--max-tokens", "2", "--json", home=home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["adapter"] is None
    assert "could not load the personal adapter v0001" in result["adapter_error"]
    assert "could not load the personal adapter v0001" in done.stderr


def test_a_plain_chat_says_how_to_go_on_and_when_it_was_cut(home):
    """Without --json, nothing said which conversation the reply went to (to continue it)
    or that the reply had stopped at the token limit rather than ended."""
    done = run_glance("chat", "--prompt", "Write a long story about a lighthouse.",
                      "--max-tokens", "3", home=home)
    assert done.returncode == 0, done.stderr
    with FeedbackStore.open(home) as store:
        [conversation] = store.conversations.list()
    assert "cut at the token limit" in done.stderr
    assert f"glance chat --conversation {conversation.id} --prompt" in done.stderr
    again = run_glance("chat", "--prompt", "Go on.", "--conversation", conversation.id,
                       "--max-tokens", "3", home=home)
    assert again.returncode == 0 and "--conversation" not in again.stderr   # it knows the id


def test_a_reply_whose_reader_went_away_is_kept_as_a_stopped_one(home):
    """`glance chat … | head -c 20`: the pipe closed mid-reply, the BrokenPipeError lost
    the reply and left the question unanswered."""
    chat = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", "--prompt", "Write a long story about a lighthouse.",
         "--max-tokens", "400", "--seed", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=ROOT, env=dict(os.environ, GLANCE_HOME=str(home)))
    printed = chat.stdout.read(20)                     # the reply is streaming
    chat.stdout.close()
    err = chat.stderr.read().decode()
    chat.wait(timeout=120)
    assert "Traceback" not in err, err
    with FeedbackStore.open(home) as store:
        [conversation] = store.conversations.list()
        messages = store.conversations.messages(conversation.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].finish_reason == "cancelled" and messages[1].tokens < 400
    assert messages[1].content.startswith(printed.decode().strip()[:10])


def test_empty_prompt_is_refused(home):
    result = run_glance("chat", "--prompt", "   ", home=home)
    assert result.returncode == 2
    assert "empty" in result.stderr
    with FeedbackStore.open(home) as store:
        assert store.counts()["messages"] == 0


def test_bad_model_is_a_clear_error(home, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("nope")
    result = run_glance("chat", "--prompt", "hi", "--model", str(fake), home=home)
    assert result.returncode == 2
    assert "not a GGUF" in result.stderr and "Traceback" not in result.stderr
    # The top-level --model, as `glance --help` offers it, reaches the chat too (the chat's
    # own --model, left out, used to overwrite it with nothing: the default model answered).
    before = run_glance("--model", str(fake), "chat", "--prompt", "hi", home=home)
    assert before.returncode == 2 and "not a GGUF" in before.stderr
    # The doctor checks the model asked for, not the default (it said all was well).
    for args in (["--model", str(fake), "doctor", "--json"], ["doctor", "--model", str(fake), "--json"]):
        doctor = run_glance(*args, home=home)
        assert doctor.returncode == 1 and "not a GGUF" in json.loads(doctor.stdout)["model"]["error"]
    # A command that uses no model says so rather than ignoring the option.
    listed = run_glance("--model", str(fake), "conversations", home=home)
    assert listed.returncode == 2 and "does not use one" in listed.stderr and listed.stdout == ""


def test_doctor_json(home, monkeypatch):
    monkeypatch.delenv("GLANCE_CAMERA", raising=False)   # (run_glance passes the environment on)
    result = run_glance("doctor", "--json", home=home)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["versions"]["llama-cpp-python"] == "0.3.36"
    assert report["model"]["ok"] and report["model"]["path"].endswith(".gguf")
    assert report["data_dir"] == str(home)
    # A data folder Glance never used (or just emptied by Delete everything): nothing is
    # wrong, and the doctor makes nothing there (it made a database and a key).
    assert report["database"] == {"ok": True, "exists": False} and not home.exists()
    assert "Database: none yet" in run_glance("doctor", home=home).stdout and not home.exists()
    FeedbackStore.open(home).close()
    report = json.loads(run_glance("doctor", "--json", home=home).stdout)
    assert report["database"]["ok"] and report["database"]["encryption"] is True
    assert "available" in report["camera"]
    assert report["camera"]["gaze_uses"] == "/dev/video0"     # the one gaze opens by default
    assert report["reward"] == {"pointwise": None, "pairwise": None}   # Glance ships none
    chosen = subprocess.run([sys.executable, "-m", "app.cli", "doctor"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120,
                            env=dict(os.environ, GLANCE_HOME=str(home),
                                     GLANCE_CAMERA="/dev/v4l/by-id/usb-cam"))
    assert "gaze uses /dev/v4l/by-id/usb-cam" in chosen.stdout, chosen.stdout
    # The camera chosen in the window (Gaze… → Camera) is the one the doctor names.
    with FeedbackStore.open(home) as store:
        store.settings.set("gaze_camera", "/dev/v4l/by-id/usb-other-video-index0")
    report = json.loads(run_glance("doctor", "--json", home=home).stdout)
    assert report["camera"]["gaze_uses"] == "/dev/v4l/by-id/usb-other-video-index0"
    assert report["camera"]["chosen_by"] == "the window"


def test_doctor_names_the_reward_model_the_app_scores_with(home):
    """The newest pointwise file that loads is the one the app uses; a file that does not
    load is reported, never a crash."""
    from test_scoring import pointwise_model
    (home / "reward").mkdir(parents=True)
    (home / "reward" / "reward-pairwise-20261207T000000Z.json").write_text("{broken")
    pointwise_model(home / "reward", stamp="20261201T000000Z")
    newest = pointwise_model(home / "reward", stamp="20261202T000000Z")
    (home / "reward" / "reward-pointwise-20261203T000000Z.json").write_text("null")   # newer, broken
    result = run_glance("doctor", "--json", home=home)
    assert result.returncode == 0, result.stderr
    reward = json.loads(result.stdout)["reward"]
    assert reward["pointwise"]["file"] == newest.name and reward["pointwise"]["columns"] == 2
    assert "none loads" in reward["pairwise"]["error"]
    text = run_glance("doctor", home=home).stdout
    assert f"Reward pointwise: {newest.name}" in text


def test_doctor_says_how_the_last_night_went(home):
    """One place to check that the loop runs: the last nightly run's outcome and the
    adapter the chat uses, beside the model and the reward models."""
    report = json.loads(run_glance("doctor", "--json", home=home).stdout)
    assert report["nightly"] == {"last_run": None, "active_adapter": None, "adapter_model": None,
                                 "in_use": {}}
    text = run_glance("doctor", home=home).stdout
    assert "Nightly:  never run (align --nightly, or align schedule install)" in text
    assert "Adapter:  none: the chat answers with the base model" in text
    from feedback_store import Conversation, Message
    with FeedbackStore.open(home) as store:
        # Thumbs given before the consent (it starts off): not used, and said so ("nothing
        # to learn" alone read as "you never preferred anything").
        chat = store.conversations.create(Conversation(title="before consent"))
        question = store.conversations.add_message(Message(conversation_id=chat.id, role="user", content="q"))
        for text, thumb in (("good", 1), ("bad", -1)):
            reply = store.conversations.add_message(Message(
                conversation_id=chat.id, role="assistant", content=text, parent_id=question.id))
            store.conversations.set_thumb(chat.id, reply.id, thumb)
        time.sleep(0.002)
        store.consent.set("personalise", True)
    nightly_settings(home)
    done = subprocess.run([sys.executable, "-m", "align.cli", "--nightly", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, GLANCE_HOME=str(home)))
    assert done.returncode == 0, done.stderr
    report = json.loads(run_glance("doctor", "--json", home=home).stdout)
    last = report["nightly"]["last_run"]
    assert last["status"] == "nothing_new" and last["message"].startswith("Nothing to learn yet")
    assert "(2 thumbs given while personalisation was off are not used" in last["message"]
    text = run_glance("doctor", home=home).stdout
    assert "Nightly:  last run " in text and "nothing_new: Nothing to learn yet" in text
    # Each model has its own adapter version: the doctor names each.
    from align import adapters
    config = adapters.AdapterConfig(adapters.adapters_dir(home))
    for name, size in (("first.gguf", 60), ("second.gguf", 90)):
        base = home.parent / name
        base.write_bytes(b"GGUF" + b"\0" * size)
        (home.parent / "a.gguf").write_bytes(b"adapter for " + name.encode())
        adapters.publish(config, home.parent / "a.gguf", None, {"base": adapters.base_identity(base)})
    text = run_glance("doctor", home=home).stdout
    assert "Adapter:  v0001, for first.gguf; v0002, for second.gguf (the chat answers with each " \
        "on its model while Personal is on)" in text, text


def test_with_glance_open_doctor_and_data_status_ask_the_window(home):
    """The window holds the database while it runs (in the tray, too); `glance doctor`
    and `glance data status` then ask it instead of reporting the database as in use."""
    from app.training_link import TrainingLink
    store = FeedbackStore.open(home)                    # the window, open
    store.consent.set("pointer", True)
    store.training.begin_run("run-1", "app", "model.gguf")
    store.training.finish_run("run-1", {"status": "nothing_new", "message": "Nothing to learn yet."})
    store.flush()
    try:
        locked = run_glance("data", "status", home=home)     # no window answers: as before
        assert locked.returncode == 2 and "in use by another process" in locked.stderr
        link = TrainingLink(store, model_path=lambda: None).start()
        try:
            status = json.loads(run_glance("data", "status", "--json", home=home).stdout)
            report = json.loads(run_glance("doctor", "--json", home=home).stdout)
            text = run_glance("data", "status", home=home).stdout
        finally:
            link.stop()
        assert link.served.count("status") == 3
        assert status["app_open"] is True and status["encryption"] is True
        assert status["consents"]["pointer"]["on"] is True
        assert status["counts"] == store.counts()
        assert report["database"]["ok"] and report["database"]["app_open"] is True
        assert report["nightly"]["last_run"]["message"] == "Nothing to learn yet."
        assert "open in the Glance window, which answered" in text and "Consent pointer      on" in text
    finally:
        store.close()
    closed = json.loads(run_glance("data", "status", "--json", home=home).stdout)
    assert closed["app_open"] is False


def test_sigkill_mid_stream_keeps_every_committed_message(home):
    # Seeded: with a random seed the "very long essay" sometimes ended after 36 tokens,
    # before the kill. Seed 3 runs it to the 2,000-token limit (about 25 s).
    first = run_glance("chat", "--prompt", "Remember the word PELICAN.", "--max-tokens", "8",
                       "--seed", "3", "--json", home=home)
    conversation = json.loads(first.stdout.strip().splitlines()[-1])["conversation_id"]
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", "--conversation", conversation, "--prompt",
         "Now write a very long essay about the sea.", "--max-tokens", "2000",
         "--temperature", "1.0", "--seed", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env=dict(os.environ, GLANCE_HOME=str(home)))
    # Wait until tokens are streaming, then kill without any chance to clean up.
    os.set_blocking(process.stdout.fileno(), False)
    received = b""
    deadline = time.monotonic() + 120
    while len(received) < 20 and time.monotonic() < deadline and process.poll() is None:
        received += process.stdout.read() or b""
        time.sleep(0.01)
    assert len(received) >= 20, "the reply never started streaming"
    assert process.poll() is None, "the reply ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    with FeedbackStore.open(home) as store:
        messages = store.conversations.messages(conversation)
        contents = [m.content for m in messages]
        assert contents[0] == "Remember the word PELICAN."
        assert contents[2] == "Now write a very long essay about the sea."
        assert len(messages) == 3  # the killed reply was never committed, nothing else lost
        assert store.conversations.get(conversation).active_leaf_id == messages[2].id


def test_bad_arguments_are_refused_before_anything_is_written(home):
    """Every refused argument: a clear message, exit 2, no traceback, nothing stored."""
    assert run_glance("consent", "set", "pointer", "off", home=home).returncode == 0
    with FeedbackStore.open(home) as store:
        before = store.counts()
    cases = [
        (["chat", "--prompt", "hi", "--conversation", "NO-SUCH-ID"], "glance conversations"),
        (["chat", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens must be between"),
        (["chat", "--prompt", "hi", "--temperature", "9"], "--temperature must be between"),
        (["chat", "--prompt", "hi", "--temperature", "warm"], "must be a number"),
        (["chat", "--prompt", "hi", "--seed", "-3"], "--seed must be between"),
        (["chat", "--prompt", "hi", "--top-p", "0"], "--top-p must be between"),
        (["chat", "--prompt", "  "], "empty"),
        (["chat", "--prompt", "hi", "--model", "/no/such/model.gguf"], "not found"),
        (["consent", "set", "telepathy", "on"], "invalid choice"),
        (["data", "delete", "--conversation", "NO-SUCH-ID"], "no conversation"),
        (["data", "delete", "--all"], "--yes"),
        (["models", "add", "/no/such/model.gguf"], "not found"),
    ]
    for args, message in cases:
        result = run_glance(*args, home=home)
        assert result.returncode == 2, (args, result.stderr)
        assert message.lower() in result.stderr.lower(), (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    with FeedbackStore.open(home) as store:
        assert store.counts() == before


def test_conversations_lists_ids(home):
    chat = run_glance("chat", "--prompt", "list me", "--max-tokens", "2", "--json", home=home)
    conversation = json.loads(chat.stdout.strip().splitlines()[-1])["conversation_id"]
    listed = run_glance("conversations", "--json", home=home)
    assert [c["id"] for c in json.loads(listed.stdout)] == [conversation]
    assert conversation in run_glance("conversations", home=home).stdout


def _commands_without_help(parser, path=()):
    """Every subcommand whose name its parent's --help would not show: argparse lists a
    subcommand under a metavar only when it was given help."""
    import argparse
    missing = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        listed = {choice.dest for choice in action._choices_actions}
        for name, subparser in action.choices.items():
            if name not in listed:
                missing.append(" ".join(path + (name,)))
            missing += _commands_without_help(subparser, path + (name,))
    return missing


def test_every_subcommand_is_listed_in_its_parents_help():
    from app.cli import build_parser as glance_parser
    from align.cli import build_parser as align_parser
    assert _commands_without_help(glance_parser(), ("glance",)) == []
    assert _commands_without_help(align_parser(), ("align",)) == []
    # and the listing is what a user sees
    help_text = glance_parser()._subparsers._group_actions[0].choices["data"].format_help()
    assert all(word in help_text for word in ("status", "export", "delete"))


def test_a_data_folder_the_account_may_not_use_gets_one_line_not_a_traceback(home):
    """A data folder owned by another account (or with its permissions changed): every
    command says which file it may not use, in one line, and exits 1."""
    import shutil
    from conftest import require
    FeedbackStore.open(home).close()
    assert run_glance("data", "status", home=home).returncode == 0      # it exists, with files
    os.chmod(home, 0o000)
    prefix = []
    if os.geteuid() == 0:      # root reads anything: another account's folder, and the
        require(shutil.which("setpriv") is not None, "setpriv (util-linux) is needed as root")
        os.chown(home, 65534, -1)      # capabilities that would let root in anyway dropped
        caps = "-dac_override,-dac_read_search,-fowner"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    env = dict(os.environ, GLANCE_HOME=str(home))
    try:
        for command in (["app.cli", "doctor"], ["app.cli", "data", "delete", "--all", "--yes"],
                        ["align.cli", "status"]):
            done = subprocess.run([*prefix, sys.executable, "-m", *command], capture_output=True,
                                  text=True, timeout=120, env=env, cwd=ROOT)
            assert done.returncode == 1, (command, done.stderr)
            assert "Traceback" not in done.stderr and "no permission to use" in done.stderr, command
    finally:
        os.chmod(home, 0o700)
        if os.geteuid() == 0:
            os.chown(home, 0, -1)
    assert (home / "glance.db").exists() and (home / "glance.key").exists()   # nothing deleted


def test_align_beside_another_glance_command_names_it(home):
    """With the database held by a Glance process that serves no socket (a command, or a
    script with the store open), align said it was "another program, and not Glance"."""
    with FeedbackStore.open(home):
        done = subprocess.run([sys.executable, "-m", "align.cli", "reward", "scores"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env=dict(os.environ, GLANCE_HOME=str(home)))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "in use by another process" in done.stderr and f"PID {os.getpid()}" in done.stderr


def test_arguments_that_are_not_utf8_are_refused_with_a_message(home, tmp_path):
    """A Latin-1 prompt, search, folder or GLANCE_HOME ended in a traceback (the database
    and the model take text only)."""
    latin1 = "Caf\xe9 cr\xe8me".encode("latin-1")
    env = dict(os.environ, GLANCE_HOME=str(home))
    for command in ([b"-m", b"app.cli", b"chat", b"--prompt", latin1],
                    [b"-m", b"app.cli", b"conversations", b"--search", latin1],
                    [b"-m", b"align.cli", b"import-ifllm", os.fsencode(tmp_path) + b"/" + latin1]):
        done = subprocess.run([os.fsencode(sys.executable), *command], capture_output=True,
                              env=env, cwd=ROOT, timeout=120)
        assert done.returncode == 2, (command, done.stderr)
        assert b"Traceback" not in done.stderr
        assert b"holds bytes that are not UTF-8 text" in done.stderr, done.stderr
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env_bytes[b"GLANCE_HOME"] = os.fsencode(tmp_path) + b"/h" + latin1
    done = subprocess.run([os.fsencode(sys.executable), b"-m", b"app.cli", b"doctor"],
                          capture_output=True, env=env_bytes, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and b"GLANCE_HOME holds bytes" in done.stderr, done.stderr


def test_a_nightly_run_that_was_stopped_is_not_shown_as_running(home):
    """A job stopped by Ctrl-C or a kill left its run 'running': `glance doctor` and
    `align status` said so until the next night's run relabelled it."""
    with FeedbackStore.open(home) as store:
        store.training.begin_run("20261208-004818-ecb0ec", "direct")
    doctor = json.loads(run_glance("doctor", "--json", home=home).stdout)
    assert doctor["nightly"]["last_run"]["status"] == "interrupted"
    env = dict(os.environ, GLANCE_HOME=str(home))
    status = json.loads(subprocess.run([sys.executable, "-m", "align.cli", "status", "--json"],
                                       capture_output=True, text=True, env=env, cwd=ROOT,
                                       timeout=120).stdout)
    assert status["running"] is False and status["runs"][0]["status"] == "interrupted"
