"""Shared, expensive inputs of the nightly-training tests, made once per machine.

Only artefacts derived from the public base model are cached across runs (in
``GLANCE_TEST_CACHE``, default ``~/.cache/glance-test``): the HF checkpoint converted
from SmolLM2's GGUF and an F16 copy of that GGUF. Anything produced from the code's own
training runs lives in the test session's temporary folders, so every run tests the
current code.
"""
import fcntl
import importlib.util
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import nightly_settings, require

SYSTEM = "You are Glance, a helpful, concise assistant."
TOPICS = ["tea", "rain", "maps", "clocks", "bread", "rivers", "chess", "glass", "bees", "kites"]
# Fast settings for tests (the defaults are for a night, not a test suite).
FAST = {"dpo": {"epochs": 2, "batch_pairs": 2, "learning_rate": 5e-4, "threads": 2,
                "max_completion_tokens": 64, "progress": False},
        "gate": {"samples": 3, "sample_tokens": 40},
        "nightly": {"lower_priority": False, "wait_for_store_s": 120}}


def cache_root() -> Path:
    root = Path(os.environ.get("GLANCE_TEST_CACHE") or Path.home() / ".cache" / "glance-test")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def cache_lock(name: str):
    with open(cache_root() / f".{name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def require_training() -> None:
    missing = [name for name in ("torch", "trl", "peft", "transformers", "datasets")
               if importlib.util.find_spec(name) is None]
    require(not missing, f"the 'train' extra is not installed (missing: {', '.join(missing)})")


def smollm2_gguf() -> Path:
    from app.models import ModelError, default_model_path
    try:
        return default_model_path()
    except ModelError as error:
        require(False, str(error))


def smollm2_checkpoint() -> Path:
    require_training()
    from align.checkpoint import CheckpointConfig, ensure_checkpoint
    return ensure_checkpoint(smollm2_gguf(), CheckpointConfig(cache_dir=cache_root() / "hf"),
                             log=lambda message: None)


def smollm2_f16() -> Path:
    """SmolLM2 with every tensor dequantised to F16: llama.cpp on the same weights torch
    trains on, without Q4_1 noise."""
    import hashlib
    from align.export_gguf import write_float_gguf
    source = smollm2_gguf()
    with open(source, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    # Named by content, not by the file's date: every fresh checkout's venv holds its own
    # copy of the model, and copies named by date piled up (72 of them, 20 GB).
    target = cache_root() / f"smollm2-f16-{digest}.gguf"
    with cache_lock("f16"):
        if not target.exists():
            partial = target.with_suffix(".part")     # (a run killed mid-way leaves no copy)
            write_float_gguf(source, partial, "f16")
            partial.replace(target)
        # Older copies (another model file) and a killed run's half copy go, once a day
        # old: a run of another checkout at the same time may still be using its copy.
        for older in cache_root().glob("smollm2-f16-*"):
            if older != target and time.time() - older.stat().st_mtime > 86400:
                older.unlink(missing_ok=True)
    return target


def seed_home(home: Path, topics=TOPICS[:8], settings: dict = FAST) -> dict:
    """A data folder whose user liked a recognisable style in every conversation: the
    liked reply starts "Certainly! Here is a fact", the disliked one hedges. Ids are fixed: the gate splits
    train/held-out by a hash of the conversation id, so random ids trained every run on
    different pairs (a CI run failed when the gate refused one such adapter; ids holding
    out 3 of 8 gave one too weak for the later tests). These hold out 2 of 8, the gate's 25 %."""
    from feedback_store import Conversation, FeedbackStore, Message
    ids = {}
    with FeedbackStore.open(home) as store:
        store.consent.set("personalise", True)
        time.sleep(0.002)
        for topic in topics:
            c = store.conversations.create(Conversation(title=topic, settings={"system_prompt": SYSTEM},
                                                        id=f"talk-{topic}"))
            q = store.conversations.add_message(Message(
                conversation_id=c.id, role="user", content=f"Tell me one fact about {topic}.",
                id=f"prompt-{topic}"))
            time.sleep(0.002)
            bad = store.conversations.add_message(Message(
                conversation_id=c.id, role="assistant", parent_id=q.id,
                content=f"I do not know much about {topic}, sorry. Maybe ask someone else about {topic}.",
                id=f"bad-{topic}"))
            time.sleep(0.002)
            good = store.conversations.add_message(Message(
                conversation_id=c.id, role="assistant", parent_id=q.id,
                content=f"Certainly! Here is a fact: {topic} have a long and interesting history.",
                id=f"good-{topic}"))
            store.conversations.set_thumb(c.id, good.id, 1)
            store.conversations.set_thumb(c.id, bad.id, -1)
            ids[topic] = {"conversation": c.id, "prompt": q.id, "good": good.id, "bad": bad.id}
    nightly_settings(home, **settings)
    return ids


def insert_study_pick(store) -> None:
    """One imported study turn (conversation ``ifllm:w/1``) whose worker preferred the
    right answer, written as ``align import-ifllm`` writes its rows."""
    def insert(con):
        con.execute("INSERT INTO research_turns (import_id, id, conversation_id, user_id, query, "
                    "turn_index) VALUES ('imp', 't1', 'ifllm:w/1', 'w', 'Which is better?', 0)")
        for side, text in ((1, "LEFT study answer"), (2, "RIGHT study answer")):
            con.execute("INSERT INTO research_shown_replies (import_id, id, turn_id, conversation_id,"
                        " user_id, side, rendered_text) VALUES ('imp', ?, 't1', 'ifllm:w/1', 'w', ?, ?)",
                        [f"t1:{side}", side, text])
        con.execute("INSERT INTO research_feedback (import_id, turn_id, conversation_id, user_id, "
                    "kind, side, value) VALUES ('imp', 't1', 'ifllm:w/1', 'w', 'preference', NULL, 2)")
    store.writer.call(insert)


def job_env(home: Path, **extra) -> dict:
    env = dict(os.environ, GLANCE_HOME=str(home), GLANCE_CHECKPOINT_CACHE=str(cache_root() / "hf"))
    env.update(extra)
    return env


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])
