"""The nightly job and the app share one database file that only one process may open.
Three ways it can meet the app, each with a real FeedbackStore in this test process (the
"app", serving the socket from a thread) and the real job in a subprocess:
app open → the job never opens the file; app closed → it opens it briefly itself;
app started while the job holds it → the app waits with a message, the job records
through the app. Plus: the snapshot the app hands over is encrypted under a one-off key."""
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.training_link import TrainingLink, open_store_waiting
from conftest import ROOT, files_contain, nightly_settings, run_glance
from feedback_store import Conversation, FeedbackStore, Message
from nightly_support import job_env, last_json

WRAPPER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import align.nightly as nightly

    held, release, ready = (Path(p) for p in sys.argv[1:4])

    def wait_for(path):
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def hold(stage):
        if stage == "begin":
            held.touch()
            wait_for(release)       # keep the database open until the test says so

    nightly._while_holding_store = hold
    nightly._before_recording = lambda: wait_for(ready)
    from align.cli import main
    sys.exit(main(["--nightly", "--json"]))
""")


def consenting_home(home: Path, marker: str = "nothing to learn") -> Path:
    with FeedbackStore.open(home) as store:
        store.consent.set("personalise", True)
        time.sleep(0.002)
        c = store.conversations.create(Conversation(title="chat"))
        store.conversations.add_message(Message(conversation_id=c.id, role="user", content=marker))
    nightly_settings(home)
    return home


def run_job(home: Path, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "align.cli", "--nightly", "--json", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=job_env(home))


@pytest.fixture
def app(home):
    """The app: the store held open by this process, the link serving it."""
    consenting_home(home)
    store = FeedbackStore.open(home)
    link = TrainingLink(store, model_path=lambda: "/models/chat.gguf").start()
    yield store, link
    link.stop()
    store.close()


def test_stopping_the_link_ends_its_thread_at_once(app):
    """Closing the window waited for the link's accept poll (0.5 s). accept() now waits
    without a timeout, so stop() must wake it: else the thread outlives the window."""
    _, link = app
    thread = link._thread
    assert link._server.gettimeout() is None
    link.stop()
    assert not thread.is_alive() and not link.path.exists()


def test_a_client_that_sends_slowly_does_not_hold_the_link(app, home):
    """The link answers one client at a time with a timeout per read: one sending a byte
    every few seconds held it, every command then gave up on the app ("in use by another
    process") and closing the window waited for it. A request now has a deadline."""
    import socket
    import threading
    from align.ipc import AppClient
    _, link = app                         # (with the link's own deadline: at 10 s, still held)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(link.path))
    done = threading.Event()

    def trickle():
        try:
            while not done.wait(0.3):
                slow.sendall(b" ")
        except OSError:
            pass                                  # the link gave up on it: as it should
    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        assert AppClient.find(home) is not None   # answered while the trickle goes on
    finally:
        done.set()
        trickler.join(10)
        slow.close()


def test_a_snapshot_is_only_written_under_a_run_id(app, home):
    """The run id is the snapshot's file name: "../../glance" named the live database,
    which the snapshot's writer removed before failing."""
    from align.ipc import AppClient, LinkError
    client = AppClient.find(home)
    for bad in ("../../glance", "/tmp/elsewhere", ""):
        with pytest.raises(LinkError, match="not a run id"):
            client.request("snapshot", run_id=bad)
    assert (home / "glance.db").exists()
    store, _ = app
    assert store.conversations.list()                 # the data is all there


def test_a_socket_folder_another_user_made_is_not_used(tmp_path, monkeypatch):
    """A data folder with a long path has its socket in the temp dir, in a folder whose
    name anyone can work out: made first by another user, the app and the job used it
    (or, not running as root, every link and job failed on a PermissionError). It is
    refused: the app serves no link and the job opens the database itself."""
    import hashlib
    import tempfile
    from align.ipc import AppClient, socket_path
    from app.session import AppSession
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    home = tmp_path / ("a-long-folder-name-" * 5) / "Glance"
    digest = hashlib.sha256(os.fsencode(home.resolve())).hexdigest()[:16]
    squatted = tmp_path / "tmp" / f"glance-{os.getuid()}-{digest}"
    squatted.mkdir(mode=0o777)
    os.chmod(squatted, 0o777)
    if os.getuid() == 0:
        os.chown(squatted, 65534, 65534)               # (another user's, where we may)
    with pytest.raises(OSError, match="not a private folder"):
        socket_path(home)
    assert AppClient.find(home) is None
    with FeedbackStore.open(home) as store:
        session = AppSession(store)
        problem = session.start_training_link(lambda: None)
        assert problem and "wait for the database instead" in problem
        session.close()
    if os.getuid() == 0:
        # Private (0700) but another user's: refused for its owner alone.
        os.chmod(squatted, 0o700)
        with pytest.raises(OSError, match="not a private folder"):
            socket_path(home)


def test_app_open_the_job_asks_the_app_and_never_opens_the_file(app, home):
    store, link = app
    assert stat.S_IMODE(os.stat(link.path).st_mode) == 0o600
    done = run_job(home)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["via"] == "app" and result["status"] == "nothing_new" and result["recorded"]
    # the reward models need reading traces, which the snapshot does not carry: the app
    # computes the user's labelled rows (none here)
    assert "reward_labels" in link.served
    assert result["reward_models"] == {
        "status": "skipped", "labels": {"pairwise": 0, "pointwise": 0},
        "reason": "no pick or thumbs of yours orders two replies you read yet"}
    assert "Could not set lock" not in done.stderr and "Traceback" not in done.stderr
    assert link.served.count("snapshot") == 1 and link.served.count("finish") == 1
    run = store.training.runs()[0]
    assert run["id"] == result["run_id"] and run["status"] == "nothing_new" and run["via"] == "app"
    assert run["base_model"] == "chat.gguf"        # the model the app chats with
    assert not list((home / "training" / "snapshots").glob("*"))   # read, then deleted


def test_app_closed_the_job_opens_the_store_itself(home):
    consenting_home(home)
    done = run_job(home)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["via"] == "direct" and result["status"] == "nothing_new"
    assert "Nothing to learn yet" in result["message"]
    assert result["reward_models"] == {
        "status": "skipped", "labels": {"pairwise": 0, "pointwise": 0},
        "reason": "no pick or thumbs of yours orders two replies you read yet"}
    with FeedbackStore.open(home) as store:         # the job let go of the file
        assert [r["id"] for r in store.training.runs()] == [result["run_id"]]


def test_the_plain_output_says_the_outcome_once(home):
    """The outcome went to the progress log (stderr) and to stdout: twice in a terminal
    and in the scheduled job's log."""
    consenting_home(home)
    done = subprocess.run([sys.executable, "-m", "align.cli", "--nightly"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=job_env(home))
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert said.count("Nothing to learn yet") == 1, said
    assert "Reward models: skipped" in done.stdout


def test_pairs_from_one_conversation_are_not_trained_on_and_the_job_says_why(home):
    """The gate keeps whole conversations aside: with one, the job trained for minutes on
    it and then refused the adapter for want of held-out pairs."""
    from nightly_support import seed_home
    seed_home(home, topics=["tea"])     # 'talk-tea' falls on the training side of the split
    for night in (1, 2):          # the second night still says why, not "the same pairs"
        done = run_job(home)
        assert done.returncode == 0, done.stderr
        result = last_json(done.stdout)
        assert result["status"] == "nothing_new" and not result["trained"], result
        assert "one conversation" in result["message"] and "split" not in result
    # settings.json's pair settings hold unless the command line says otherwise
    assert sum(result["pairs"].values()) == 1
    nightly_settings(home, pairs={"max_pairs": 0})
    assert last_json(run_job(home).stdout)["pairs"] == {}


@pytest.mark.timeout(600)
def test_app_started_while_the_job_holds_the_file_waits_and_the_job_records_through_it(home, tmp_path):
    consenting_home(home)
    held, release, ready = tmp_path / "held", tmp_path / "release", tmp_path / "ready"
    job = subprocess.Popen([sys.executable, "-c", WRAPPER, str(held), str(release), str(ready)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env=job_env(home))
    try:
        deadline = time.monotonic() + 120
        while not held.exists():
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the job never opened the store"
            time.sleep(0.02)
        told = []

        def on_wait(message):           # the window would show this
            told.append(message)
            release.touch()

        store = open_store_waiting(home, on_wait=on_wait, poll_s=0.05)
        link = TrainingLink(store).start()
        ready.touch()
        out, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    try:
        assert job.returncode == 0, err
        assert len(told) == 1 and "nightly personalisation" in told[0]
        result = last_json(out)
        assert result["via"] == "direct" and result["recorded"]
        # It read the rows itself (no snapshot) and recorded through the app. Whether it
        # also asked the app for the reward labels depends on whether the app's socket was
        # up when it got there (both are right).
        assert "snapshot" not in link.served and link.served[-1] == "finish"
        assert set(link.served) <= {"hello", "reward_labels", "finish"}
        assert store.training.runs()[0]["id"] == result["run_id"]
        assert "Traceback" not in err
    finally:
        link.stop()
        store.close()


def test_the_snapshot_is_encrypted_under_a_key_that_never_touches_the_disk(home):
    from align.ipc import AppClient
    from feedback_store import StoreError
    from feedback_store.training import read_snapshot
    marker = "ZEBRA-SNAPSHOT-MARKER-4417"
    consenting_home(home, marker=marker)
    store = FeedbackStore.open(home)
    link = TrainingLink(store).start()
    try:
        client = AppClient.find(home)
        from feedback_store.training import new_run_id
        answer = client.request("snapshot", run_id=new_run_id())
        path = Path(answer["path"])
        assert path.parent == home / "training" / "snapshots"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert marker.encode() not in path.read_bytes()
        assert files_contain(home, answer["key"].encode()) == []
        rows = read_snapshot(path, answer["key"])
        assert [m["content"] for m in rows["messages"]] == [marker]
        with pytest.raises(StoreError):
            read_snapshot(path, "00" * 32)
        assert store.training.runs()[0]["status"] == "running"
    finally:
        link.stop()
        store.close()
    # The next app start tidies a snapshot no job came back for.
    with FeedbackStore.open(home) as store:
        TrainingLink(store).start().stop()
    assert not path.exists()


def test_a_conversation_deleted_while_the_job_trained_retires_its_adapter_when_recorded(home):
    """The job checks before publishing that the conversations it learned from still
    exist, but the user may delete one after that check and before the run is recorded
    (the record can wait minutes for the database). Recording drops that conversation's
    pairs, and the adapter that learned from it is retired at once."""
    import json
    from align.ipc import AppClient
    store = FeedbackStore.open(home)
    store.consent.set("personalise", True)
    chats = [store.conversations.create(Conversation(title=title)) for title in ("a", "b")]
    for chat in chats:
        store.conversations.add_message(Message(conversation_id=chat.id, role="user", content="hi"))
    root = home / "adapters"
    pending = root / ".pending-v0001"       # installed, not in use until it is recorded
    pending.mkdir(parents=True)
    (pending / "adapter.gguf").write_bytes(b"GGUF")
    (root / "active.json").write_text(json.dumps({"version": None, "counter": 0}))
    store.training.begin_run("run-1", "app", "model.gguf")
    store.delete_conversation(chats[0].id, compact=False)        # while it trained
    link = TrainingLink(store).start()
    try:
        outcome = {"status": "published", "published": True, "adapter_version": "v0001",
                   "pairs_used": [{"conversation_id": chat.id, "prompt_message_id": "p",
                                   "chosen_message_id": "c", "rejected_message_id": "r",
                                   "source": "thumbs", "epsilon": 0.1, "split": "train"}
                                  for chat in chats],
                   "adapter": {"version": "v0001", "status": "published", "conversations": 2}}
        answer = AppClient.find(home).request("finish", run_id="run-1", outcome=outcome)
        assert answer["retired"] == ["v0001"]
        assert not pending.exists()          # so the job finds it gone and never activates it
        assert json.loads((root / "active.json").read_text())["version"] is None
        assert {v["version"]: v["status"] for v in store.training.adapter_versions()} == \
            {"v0001": "retired"}
        assert [p["conversation_id"] for p in store.training.pairs_used("run-1")] == [chats[1].id]
    finally:
        link.stop()
        store.close()


def test_delete_everything_during_a_run_leaves_nothing_and_records_nothing(home, monkeypatch):
    """The user deletes everything while the job runs (the job holds the database only for
    moments). Opening the store to record the run then created a new database and key in
    the wiped folder, with the run in it, and the job's checkpoints stayed behind."""
    import align.nightly as nightly
    from align.nightly import NightlyConfig, WORK, run_nightly
    from feedback_store.privacy import delete_everything
    consenting_home(home)
    checkpoints = home / WORK / "run" / "checkpoint-1"

    def user_deletes_everything():
        checkpoints.mkdir(parents=True)           # as the trainer leaves them
        (checkpoints / "adapter_model.safetensors").write_bytes(b"weights")
        assert delete_everything(home) == []
        checkpoints.mkdir(parents=True)           # written again by the run after the wipe
        (home / "cache" / "hf" / "0123").mkdir(parents=True)   # and the converted base model
    monkeypatch.setattr(nightly, "_before_recording", user_deletes_everything)
    result = run_nightly(NightlyConfig(data_dir=home, lower_priority=False), log=lambda m: None)
    assert result["status"] == "cancelled" and not result["recorded"], result
    assert "deleted while the nightly training ran" in result["message"]
    assert not (home / "glance.db").exists() and not (home / "glance.key").exists()
    assert not (home / WORK).exists() and not (home / "cache" / "hf").exists()


def test_a_run_that_fails_before_it_began_is_a_failure_not_a_deletion(tmp_path):
    """Only a run that found its database and then lost it was cut short by a deletion;
    one that failed before (here: its settings file) is a plain failure, and is recorded."""
    from align.nightly import NightlyConfig, run_nightly
    home = tmp_path / "fresh"
    FeedbackStore.open(home).close()
    (home / "training").mkdir(parents=True)
    (home / "training" / "settings.json").write_text('{"dpo": {"epochs": "lots"}}')
    result = run_nightly(NightlyConfig(data_dir=home, lower_priority=False), log=lambda m: None)
    assert result["status"] == "failed" and result["recorded"], result
    assert "dpo.epochs" in result["message"]


def test_a_folder_without_data_is_left_as_it_is(tmp_path):
    """After *Delete everything* (or before Glance was ever used) the scheduled job and
    `align status` opened the store, which made a new database and key every night."""
    home = tmp_path / "wiped"
    home.mkdir()
    done = run_job(home)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["status"] == "skipped" and "No Glance data" in result["message"], result
    status = subprocess.run([sys.executable, "-m", "align.cli", "status", "--json"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=job_env(home))
    assert status.returncode == 0, status.stderr
    assert "No Glance data" in json.loads(status.stdout)["no_data"]
    assert list(home.iterdir()) == []


def test_personalisation_turned_off_while_the_job_trained_is_heard_before_publishing(home):
    """Withdrawing the consent mid-run changed nothing: the job published its adapter and
    the app recorded which replies it had paired."""
    from align.ipc import AppClient
    import align.nightly as nightly
    store = FeedbackStore.open(home)
    store.consent.set("personalise", True)
    chat = store.conversations.create(Conversation(title="a"))
    store.conversations.add_message(Message(conversation_id=chat.id, role="user", content="hi"))
    store.training.begin_run("run-1", "app", "model.gguf")
    link = TrainingLink(store).start()
    try:
        client = AppClient.find(home)
        assert nightly._App(client).before_publishing({chat.id}) == {"ids": {chat.id}, "personalise": True}
        store.consent.set("personalise", False)                   # while it trained
        assert nightly._App(client).before_publishing({chat.id})["personalise"] is False
        pair = {"conversation_id": chat.id, "prompt_message_id": "p", "chosen_message_id": "c",
                "rejected_message_id": "r", "source": "thumbs", "epsilon": 0.1, "split": "train"}
        client.request("finish", run_id="run-1", outcome={
            "status": "not_published", "published": False, "pairs_used": [pair]})
        assert store.training.pairs_used("run-1") == []
    finally:
        link.stop()
        store.close()
    direct = nightly._Direct(home, log=lambda m: None)
    assert direct.before_publishing({chat.id}) == {"ids": {chat.id}, "personalise": False}


def test_a_run_whose_personalisation_was_turned_off_while_it_trained_is_not_published(
        home, tmp_path, monkeypatch):
    """The job checks, before publishing, that it may still: the user turned
    personalisation off while it trained (the training itself is not what is tested here:
    it stands aside, and says it would publish)."""
    import align.nightly as nightly
    from nightly_support import seed_home
    seed_home(home)

    def trained_while_the_user_says_no(*args, **kwargs):
        with FeedbackStore.open(home) as store:          # (the app is closed: direct)
            store.consent.set("personalise", False)
        (tmp_path / "work").mkdir()
        return {"publish": True, "reasons": [], "work": tmp_path / "work", "gguf": None,
                "peft": None, "report": {}}
    monkeypatch.setattr(nightly, "_train_and_gate", trained_while_the_user_says_no)
    result = nightly.run_nightly(nightly.NightlyConfig(data_dir=home, lower_priority=False),
                                 log=lambda m: None)
    assert result["status"] == "not_published" and not result["published"], result
    assert "personalisation was turned off while it trained" in result["message"]
    assert not (home / "adapters").exists() or not any((home / "adapters").glob("v*"))
    with FeedbackStore.open(home) as store:
        assert store.training.pairs_used(result["run_id"]) == []
        store.consent.set("personalise", True)            # on again the next morning

    # The same pairs are trained on the next night: the refusal did not judge them (it
    # said "Nothing new to learn: the same 16 pairs as last time" every night after).
    trained = []

    def trained_and_refused(*args, **kwargs):
        trained.append(True)
        return {"publish": False, "reasons": ["the gate's stand-in refused"], "work": tmp_path / "work",
                "gguf": None, "peft": None, "report": {}}
    monkeypatch.setattr(nightly, "_train_and_gate", trained_and_refused)
    again = nightly.run_nightly(nightly.NightlyConfig(data_dir=home, lower_priority=False),
                                log=lambda m: None)
    assert trained and again["status"] == "not_published", again


def test_a_model_no_adapter_can_be_made_for_is_said_before_any_training(home, tmp_path):
    """transformers converts more architectures than Glance can export to llama.cpp: the
    job trained all night and failed at the export, every night."""
    from conftest import write_gguf
    from nightly_support import seed_home
    seed_home(home, topics=["tea", "maps"])
    other = write_gguf(tmp_path / "phi.gguf", "phi3", True)
    from app.models import inspect_model
    with FeedbackStore.open(home) as store:
        store.models.remember(inspect_model(other))          # the model the chat uses now
    done = run_job(home)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["status"] == "skipped" and not result["trained"], result
    assert "phi3" in result["message"] and "phi.gguf" in result["message"]
    assert "checkpoint" not in result["timings"], result


def test_an_interrupted_runs_state_stays_for_it_to_resume_until_its_conversation_goes(home):
    """The window removed every unfinished run's checkpoints at each start, so a run
    stopped by a shutdown started over the next night (the README says it resumes); and
    `glance data delete --conversation` left weights learned from the deleted chat."""
    from align.adapters import note_learned_from
    from align.nightly import WORK
    with FeedbackStore.open(home) as store:
        for name in ("kept", "doomed"):
            store.conversations.create(Conversation(title=name, id=name))
    resumable, unnamed = home / WORK / "resumable", home / WORK / "unnamed"
    note_learned_from(resumable, {"kept", "doomed"})
    (resumable / "trainer").mkdir()
    (unnamed / "trainer").mkdir(parents=True)            # no note: whose it is is not known
    store = FeedbackStore.open(home)
    link = TrainingLink(store, model_path=lambda: "/models/chat.gguf").start()   # app start
    link.stop()
    store.close()
    assert sorted(p.name for p in (home / WORK).iterdir()) == ["resumable"]
    deleted = run_glance("data", "delete", "--conversation", "doomed", "--yes", home=home)
    assert deleted.returncode == 0, deleted.stderr
    assert list((home / WORK).iterdir()) == []


def test_an_interrupted_run_on_imported_study_pairs_too_stays_for_it_to_resume(home, monkeypatch):
    """With --include-imported the note of what the weights learned from named the
    study's conversations, which are never in the conversations table: at the next app
    start the run's state looked as if it had learned from deleted chats and went."""
    import align.dpo
    import align.nightly as nightly
    from nightly_support import cache_root, insert_study_pick, require_training, seed_home
    require_training()
    seed_home(home)
    with FeedbackStore.open(home) as store:
        insert_study_pick(store)
    monkeypatch.setenv("GLANCE_CHECKPOINT_CACHE", str(cache_root() / "hf"))

    def power_cut(*args, **kwargs):
        raise RuntimeError("the machine went down mid-training")
    monkeypatch.setattr(align.dpo, "train_dpo", power_cut)
    result = nightly.run_nightly(nightly.NightlyConfig(data_dir=home, lower_priority=False,
                                                       include_imported=True), log=lambda m: None)
    assert result["status"] == "failed" and "went down mid-training" in result["message"], result
    assert result["pairs"].get("imported"), result
    [work] = list((home / nightly.WORK).iterdir())
    store = FeedbackStore.open(home)
    link = TrainingLink(store, model_path=lambda: "/models/chat.gguf").start()   # app start
    link.stop()
    store.close()
    assert list((home / nightly.WORK).iterdir()) == [work]


def test_an_open_window_hears_when_the_active_adapter_changes_after_the_record(home, tmp_path):
    """The job records a run before its adapter becomes active, and the window read the
    label at the record: it kept saying "Base model" (or the old version) all morning.
    `align rollback` said nothing to it either."""
    from align import adapters
    consenting_home(home)
    config = adapters.AdapterConfig(adapters.adapters_dir(home))
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF" + b"\0" * 60)
    for n in (1, 2):
        (tmp_path / f"a{n}.gguf").write_bytes(f"adapter {n}".encode())
        adapters.publish(config, tmp_path / f"a{n}.gguf", None,
                         {"base": adapters.base_identity(base), "pairs": {"train": n}})
    heard = []
    store = FeedbackStore.open(home)
    link = TrainingLink(store, model_path=lambda: str(base),
                        on_adapters_changed=lambda: heard.append(
                            adapters.read_active(config.root).get("version"))).start()
    try:
        done = subprocess.run([sys.executable, "-m", "align.cli", "rollback"], capture_output=True,
                              text=True, timeout=120, cwd=ROOT, env=job_env(home))
        assert done.returncode == 0, done.stderr
        assert heard == ["v0001"]
    finally:
        link.stop()
        store.close()
