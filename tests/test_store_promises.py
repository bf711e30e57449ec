"""What the README promises about the database that no other test covered: a damaged key
file, a plaintext or corrupt glance.db, `glance data delete --all` while the app runs,
and opening a version-1 database kept as a fixture (migrated to the latest schema)."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_store import FeedbackStore, StoreError, WrongKey, migrations
from feedback_store.connection import open_encrypted
from conftest import ROOT, quick_settings, run_glance

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` with the sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def assert_clear_cli_refusal(home, *phrases):
    """The commands a user would reach for say what is wrong, without a traceback."""
    for command in (["data", "status"], ["doctor", "--json"], ["conversations"]):
        result = run_glance(*command, home=home)
        text = result.stdout + result.stderr
        assert result.returncode != 0, (command, text)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        for phrase in phrases:
            assert phrase in text, (command, text)


@pytest.fixture
def stored_home(home):
    with FeedbackStore.open(home) as store:
        from feedback_store import Conversation, Message
        conversation = Conversation(title="kept")
        store.conversations.create(conversation)
        store.conversations.add_message(Message(conversation_id=conversation.id, role="user",
                                                content="keep me"))
    return home


# --- the key file ------------------------------------------------------------------------------
GARBAGE_KEYS = {
    "binary": bytes(range(256)) * 2,
    "quote": b"it's not a key at all",           # would have reached ATTACH as SQL
    "short-hex": b"abcd",
    "empty": b"",
    "hex-plus-junk": b"ab" * 32 + b"\x00junk",
}


@pytest.mark.parametrize("garbage", GARBAGE_KEYS.values(), ids=GARBAGE_KEYS.keys())
def test_a_damaged_key_file_is_a_clear_error_and_nothing_is_touched(stored_home, garbage):
    (stored_home / "glance.key").write_bytes(garbage)
    before = snapshot(stored_home)
    with pytest.raises(WrongKey, match="glance.key is damaged") as caught:
        FeedbackStore.open(stored_home)
    assert "was touched" in str(caught.value) and "delete --all" in str(caught.value)
    assert_clear_cli_refusal(stored_home, "glance.key is damaged")
    assert snapshot(stored_home) == before


def test_the_real_key_still_opens_after_a_damaged_one_is_restored(stored_home):
    good = (stored_home / "glance.key").read_bytes()
    (stored_home / "glance.key").write_bytes(b"garbage")
    with pytest.raises(StoreError):
        FeedbackStore.open(stored_home)
    (stored_home / "glance.key").write_bytes(good + b"\n")  # an editor's trailing newline
    with FeedbackStore.open(stored_home) as store:
        assert [c.title for c in store.conversations.list()] == ["kept"]


# --- the database file -------------------------------------------------------------------------
def test_a_plaintext_database_is_refused_untouched(stored_home):
    """An unencrypted DuckDB file where glance.db should be is never opened, migrated or
    written: Glance's data is encrypted or not used at all."""
    import duckdb
    database = stored_home / "glance.db"
    database.unlink()
    plain = duckdb.connect(str(database))
    plain.execute("CREATE TABLE conversations (id VARCHAR, title VARCHAR)")
    plain.execute("INSERT INTO conversations VALUES ('x', 'plain text secret')")
    plain.close()
    before = snapshot(stored_home)
    with pytest.raises(StoreError, match="not encrypted"):
        FeedbackStore.open(stored_home)
    assert_clear_cli_refusal(stored_home, "not encrypted")
    assert snapshot(stored_home) == before


CORRUPTIONS = {
    "random-bytes": lambda good: os.urandom(len(good)),
    "zeros": lambda good: bytes(len(good)),
    "truncated": lambda good: good[:5000],
    "empty": lambda good: b"",
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_database_is_a_clear_error_and_untouched(stored_home, corrupt):
    database = stored_home / "glance.db"
    database.write_bytes(corrupt(database.read_bytes()))
    before = snapshot(stored_home)
    with pytest.raises(StoreError, match="Could not open the database"):
        FeedbackStore.open(stored_home)
    assert_clear_cli_refusal(stored_home, str(database))
    assert snapshot(stored_home) == before


def test_a_damaged_block_is_called_damage_not_a_wrong_key(stored_home):
    """The right key with a block that no longer decrypts: DuckDB asks "are you using the
    right key?", which sent the user looking for another key."""
    database = stored_home / "glance.db"
    data = bytearray(database.read_bytes())
    middle = len(data) // 2 // 4096 * 4096 + 100          # inside a block, past the headers
    data[middle:middle + 200] = bytes(b ^ 0xFF for b in data[middle:middle + 200])
    database.write_bytes(bytes(data))
    before = snapshot(stored_home)
    with pytest.raises(StoreError, match="is damaged: part of it no longer decrypts") as caught:
        FeedbackStore.open(stored_home)
    assert "right key" not in str(caught.value)
    assert_clear_cli_refusal(stored_home, "is damaged")
    assert snapshot(stored_home) == before


# --- delete everything while the app runs ---------------------------------------------------
def holds_lock(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds a POSIX lock on ``path`` (read from /proc/locks,
    which takes no lock itself, so it cannot race the app's own open)."""
    inode = str(path.stat().st_ino)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "POSIX" in fields and str(pid) in fields and \
                any(f.rsplit(":", 1)[-1] == inode for f in fields):
            return True
    return False


@pytest.mark.timeout(600)
def test_delete_all_while_the_app_runs_is_refused_naming_it(stored_home, qtbot):
    with FeedbackStore.open(stored_home) as store:  # no consent dialog: straight to the window
        for signal in ("pointer", "gaze", "personalise"):
            store.consent.set(signal, False)
        store.settings.set("generation", quick_settings().to_dict())
    env = dict(os.environ, GLANCE_HOME=str(stored_home), QT_QPA_PLATFORM="offscreen")
    app = subprocess.Popen([sys.executable, "-m", "app.cli"], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        qtbot.waitUntil(lambda: app.poll() is not None or holds_lock(app.pid, stored_home / "glance.db"),
                        timeout=120_000)
        assert app.poll() is None, app.stderr.read()
        before = snapshot(stored_home)
        refused = run_glance("data", "delete", "--all", "--yes", home=stored_home)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
        assert f"(PID {app.pid})" in refused.stderr and "in use by another process" in refused.stderr
        assert before.keys() <= snapshot(stored_home).keys()   # nothing deleted (the app may add a WAL)
        assert (stored_home / "glance.key").read_bytes()
        assert app.poll() is None  # the app was not disturbed
    finally:
        app.terminate()
        app.wait(timeout=60)
    # Nothing was half-deleted: the app's data opens as before ...
    with FeedbackStore.open(stored_home) as store:
        assert [c.title for c in store.conversations.list()] == ["kept"]
    # ... and once the app is gone the same command deletes everything.
    done = run_glance("data", "delete", "--all", "--yes", home=stored_home)
    assert done.returncode == 0, done.stderr
    assert list(stored_home.iterdir()) == []


def test_the_users_own_files_in_the_data_folder_keep_their_modes(stored_home):
    """Every file in the folder was made 0600 at each open and close: a script of the
    user's in a GLANCE_HOME they also use was no longer executable."""
    script = stored_home / "backup.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    FeedbackStore.open(stored_home).close()
    assert script.stat().st_mode & 0o777 == 0o755
    assert (stored_home / "glance.db").stat().st_mode & 0o777 == 0o600


def test_delete_everything_deletes_only_what_glance_made(stored_home, tmp_path):
    """GLANCE_HOME may name a folder with the user's own files in it (a typo, their home
    folder): `data delete --all` removes Glance's files and leaves theirs, saying so."""
    (stored_home / "thesis.txt").write_text("years of work")
    (stored_home / "notes").mkdir()
    (stored_home / "notes" / "a.md").write_text("mine")
    # Names beginning as Glance's do (every glance.* entry went, folders with all they held)
    (stored_home / "glance.txt").write_text("mine too")
    (stored_home / "glance.backup").mkdir()
    (stored_home / "glance.backup" / "glance.db").write_text("a copy the user keeps")
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "cat.jpg").write_bytes(b"cat")
    (stored_home / "models").symlink_to(elsewhere)      # a link of theirs, not Glance's folder
    glances = {"cache": "gguf-headers.json", "reward": "reward-pairwise-1.json",
               "gaze": "calibration-ab12.json"}
    for folder, name in glances.items():
        (stored_home / folder).mkdir(exist_ok=True)
        (stored_home / folder / name).write_text("glance's")
    # Adapters as Glance's own functions leave them (its lock file and a retired version's
    # mark were not on the list, so the folder of adapters learnt from the chats stayed).
    from align import adapters
    config = adapters.AdapterConfig(adapters.adapters_dir(stored_home))
    base, adapter = tmp_path / "base.gguf", tmp_path / "adapter.gguf"
    base.write_bytes(b"GGUF" + b"\0" * 60)
    adapter.write_bytes(b"GGUF-adapter")
    for _ in range(2):
        adapters.publish(config, adapter, None, {"base": adapters.base_identity(base), "pairs": {"train": 1}})
    adapters.retire(config, "v0002")
    (stored_home / "training").mkdir(exist_ok=True)                 # a name Glance uses, but
    (stored_home / "training" / "marathon-plan.xlsx").write_text("theirs")   # the user's
    done = run_glance("data", "delete", "--all", "--yes", home=stored_home)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in stored_home.iterdir()) == ["glance.backup", "glance.txt", "models",
                                                             "notes", "thesis.txt", "training"]
    assert (stored_home / "glance.backup" / "glance.db").exists()
    assert (stored_home / "thesis.txt").read_text() == "years of work"
    assert (stored_home / "notes" / "a.md").read_text() == "mine" and (elsewhere / "cat.jpg").exists()
    assert (stored_home / "training" / "marathon-plan.xlsx").read_text() == "theirs"
    assert ("Left there, because Glance did not make them: glance.backup, glance.txt, models, "
            "notes, thesis.txt, training."
            in done.stdout)


def test_delete_everything_overwrites_the_key_file_before_removing_it(stored_home, tmp_path):
    """On a machine without a keyring the key is a file beside the database. It was
    unlinked before forget_key could overwrite it, so its bytes stayed in free blocks
    next to the deleted database. A second link to the same file shows what was left."""
    from feedback_store.privacy import delete_everything
    key = stored_home / "glance.key"
    original = key.read_bytes()
    left_behind = tmp_path / "same-inode"
    os.link(key, left_behind)               # what an undelete tool would find
    delete_everything(stored_home)
    assert list(stored_home.iterdir()) == []
    assert left_behind.read_bytes() != original and len(left_behind.read_bytes()) >= len(original)


# --- a version-1 database ------------------------------------------------------------------
def test_a_version_1_database_is_migrated_and_keeps_its_rows(home):
    """tests/fixtures/schema_v1.duckdb was written once with migration 0001 only (see
    make_schema_v1.py) under the fixed key in schema_v1.key."""
    home.mkdir(parents=True)
    shutil.copyfile(FIXTURES / "schema_v1.duckdb", home / "glance.db")
    shutil.copyfile(FIXTURES / "schema_v1.key", home / "glance.key")
    key = (FIXTURES / "schema_v1.key").read_text()
    probe = open_encrypted(home / "glance.db", key, read_only=True)
    try:
        assert migrations.current_version(probe) == 1   # really the old schema
    finally:
        probe.close()
    assert migrations.LATEST_VERSION > 1

    with FeedbackStore.open(home) as store:
        assert store.schema_version() == migrations.LATEST_VERSION
        assert store.status()["schema_version"] == migrations.LATEST_VERSION
        (conversation,) = store.conversations.list()
        assert (conversation.id, conversation.title) == ("conv-v1", "Kept since version 1")
        assert conversation.active_leaf_id == "msg-v1-reply"
        assert conversation.settings == {"temperature": 0.5, "max_tokens": 64}
        user, reply = store.conversations.messages("conv-v1")
        assert (user.content, reply.content) == ("What did version 1 store?",
                                                 "Everything you said, encrypted.")
        assert reply.parent_id == user.id and reply.tokens == 7 and reply.finish_reason == "stop"
        assert store.conversations.thumbs("conv-v1") == {"msg-v1-reply": 1}
        assert store._rows("SELECT signal, granted, text_version, seq FROM consents") == [
            {"signal": "pointer", "granted": True, "text_version": 1, "seq": 1}]   # (schema 9)
        assert store.consent.decisions()["pointer"]["on"]
        assert store.settings.retention_days == 3650
        (sample,) = store._rows("SELECT * FROM pointer_samples")
        assert (sample["x"], sample["y"], sample["text_offset"]) == (10.5, 20.5, 3)
        # Columns added by later migrations exist, empty for old rows.
        assert sample["word_index"] is None and sample["line"] is None
        versions = [r["version"] for r in store._rows(
            "SELECT version FROM schema_migrations ORDER BY version")]
        assert versions[0] == 1 and versions[-1] == migrations.LATEST_VERSION
        # And the old file is a working database: a new turn is stored beside the old ones.
        from feedback_store import Message
        store.conversations.add_message(Message(conversation_id="conv-v1", role="user",
                                                content="And now?", parent_id="msg-v1-reply"))
    with FeedbackStore.open(home) as store:
        assert len(store.conversations.messages("conv-v1")) == 3
