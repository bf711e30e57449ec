"""Scoring a read reply, as the app does when it leaves the screen (align/scoring.py).

    .venv/bin/python bench/reward_scoring.py [--replies 20] [--seconds 60] [--json]

A fresh encrypted store holds a conversation of --replies replies of ≈ 1,300 characters
(the IFLLM median), each read for --seconds: pointer samples at 120 Hz and gaze at 30 Hz
over its words, plus what capture logs beside them: viewport events as it scrolls (one a
second) and a selection dragged over 30 steps, then copied. The pointwise reward
model is trained on ../shared/ifllm first (or given with --model). Then every reply is
scored with ``score_shown_reply``: the reading trace read back from the store, the
features against the previous reply, the model. Reported: wall and CPU milliseconds per
reply (median and p95), and the same for the read-back alone. Target (issue): < 20 ms.
Then, as the next start of the app does once, the per-user history is restored from the
scored replies (at most ``HISTORY_KEPT``): wall and CPU milliseconds.
"""
import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import print_result, scratch_dir  # noqa: E402

SENTENCE = ("The river carries sediment from the mountains to the sea, and its delta grows "
            "a little every year as the water slows down. ")


def reading_rows(session_id, shown_id, conversation_id, text, line_starts, seconds, start_ns):
    """Pointer at 120 Hz and gaze at 30 Hz moving through the lines in reading order."""
    from feedback_store import GazeSample, PointerSample
    pointer, gaze = [], []
    lines = len(line_starts)
    for i in range(int(seconds * 120)):
        t = start_ns + i * 8_333_333
        line = min(lines - 1, int(i / (seconds * 120) * lines))
        offset = min(len(text) - 1, line_starts[line] + (i * 3) % 80)
        pointer.append(PointerSample(session_id, shown_id, conversation_id, t, time.time_ns(),
                                     "move", x=100.0 + (i * 3) % 600, y=100.0 + 18 * line,
                                     text_offset=offset, source="pynput", line=line))
    # Gaze: fixations of 8 frames (≈ 270 ms) stepping along the lines, 1.5 lines below the
    # text with 6 px of noise a frame, each stored at its end as the tracker reports it;
    # positions on the reply too (schema 8), so the trace reader assigns their lines.
    rng = random.Random(start_ns)
    frames = int(seconds * 30)
    for i in range(frames):
        t = start_ns + i * 33_333_333
        fixation = i // 8
        line = min(lines - 1, int(i / frames * lines))
        x, y = 100.0 + (fixation * 70) % 600 + rng.gauss(0, 6), 100.0 + 18 * line + 36 + rng.gauss(0, 6)
        under = min(lines - 1, max(0, int((y - 100.0) // 18)))     # as captured
        offset = min(len(text) - 1, line_starts[under] + int((x - 100.0) / 600 * 90))
        gaze.append(GazeSample(session_id, shown_id, conversation_id, t, time.time_ns(), "raw",
                               x=x, y=y, text_offset=offset, line=under, confidence=0.9,
                               reply_x=x - 100.0, reply_y=y - 100.0))
        if i % 8 == 7:
            gaze.append(GazeSample(session_id, shown_id, conversation_id, t + 33_333_333,
                                   time.time_ns(), "fixation", x=x, y=y, confidence=0.9,
                                   duration_ms=8 * 33.333, reply_x=x - 100.0, reply_y=y - 100.0))
    return pointer, gaze


def activity_rows(session_id, shown_id, message_id, conversation_id, lines, seconds, start_ns):
    """What capture logs besides samples: the visible lines scrolled down once a second
    (10 lines on screen), a selection dragged over 30 steps, then copied."""
    from feedback_store import ReplyAction, ViewportEvent
    views, actions = [], []
    for s in range(int(seconds)):
        first = min(max(lines - 10, 0), s * lines // max(int(seconds), 1))
        views.append(ViewportEvent(session_id, shown_id, conversation_id, start_ns + s * 10**9,
                                  time.time_ns(), "layout" if s == 0 else "scroll", first,
                                  min(lines - 1, first + 9)))
    for step in range(30):
        actions.append(ReplyAction(session_id, shown_id, conversation_id, message_id,
                                start_ns + (10 + step // 10) * 10**9, time.time_ns(), "select",
                                200, 200 + 5 * step))
    actions.append(ReplyAction(session_id, shown_id, conversation_id, message_id,
                            start_ns + 13 * 10**9, time.time_ns(), "copy", 200, 345))
    return views, actions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="reading time per reply")
    parser.add_argument("--model", help="a reward-pointwise-*.json (default: train on ../shared/ifllm)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from align.reward import RewardModel
    from align.examples import ExampleHistory
    from align.scoring import HISTORY_KEPT, restore_history, score_shown_reply
    from app.session import AppSession, ReplyOnScreen
    from feedback_store import Conversation, FeedbackStore, Message

    home = Path(scratch_dir("glance-scoring-")) / "home"
    if args.model:
        model = RewardModel.load(args.model)
    else:
        from align.train import train_ifllm
        # Not into home/reward, where the session's own scorer would find it and score
        # beside the measurement.
        written = train_ifllm(ROOT.parent / "shared" / "ifllm", home.parent / "models", tasks=("pointwise",))
        model = RewardModel.load(written["pointwise"]["path"])

    store = FeedbackStore.open(home)
    for signal in ("pointer", "gaze", "personalise"):
        store.consent.set(signal, True)
    session = AppSession(store)
    conversation = store.conversations.create(Conversation(title="rivers"))
    text = (SENTENCE * 12)[:1300]
    line_starts = list(range(0, len(text), 90))
    boxes = [{"line": i, "start": s, "end": min(s + 90, len(text)), "x": 100, "y": 100 + 18 * i,
              "w": 600, "h": 18} for i, s in enumerate(line_starts)]
    shown_ids, parent = [], None
    samples = 0
    for r in range(args.replies):
        question = store.conversations.add_message(Message(conversation.id, "user", f"Tell me about rivers {r}.",
                                                           parent_id=parent))
        reply = store.conversations.add_message(Message(conversation.id, "assistant", text,
                                                        parent_id=question.id))
        parent = reply.id
        shown_id = session.reply_shown(ReplyOnScreen(reply.id, conversation.id, (100, 100, 600, 420),
                                                     1.0, text, boxes))
        store.flush()
        start = time.monotonic_ns()
        pointer, gaze = reading_rows(session.id, shown_id, conversation.id, text, line_starts,
                                     args.seconds, start)
        store.samples.submit(pointer)
        store.samples.submit(gaze)
        views, actions = activity_rows(session.id, shown_id, reply.id, conversation.id,
                                       len(line_starts), args.seconds, start)
        store.samples.submit(views)
        store.samples.submit(actions)
        samples = len(pointer) + len(gaze)
        shown_ids.append(shown_id)
    session.replies_hidden()          # marks them hidden (its own scorer finds no model: idle)
    store.flush()

    wall, cpu, read_wall = [], [], []
    traces = {}          # as ReplyScorer keeps them: the previous reply's trace is not read again
    history = ExampleHistory(keep=HISTORY_KEPT)   # as ReplyScorer keeps it: per-user centring
    for shown_id in shown_ids:
        # CPU of the whole process: DuckDB answers the reads on threads of its own.
        t0, c0 = time.perf_counter(), time.process_time()
        score = score_shown_reply(store, model, shown_id, traces=traces, history=history)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        assert score is not None and 0 < score["probability"] < 1
        store.scores.record(**score)                  # as ReplyScorer does
        # The trace read alone, after the scoring (before it, it warmed what was timed).
        t0 = time.perf_counter()
        store.traces.for_shown_reply(shown_id)
        read_wall.append((time.perf_counter() - t0) * 1000)
    assert session.scorer.scored == 0                 # nothing scored beside the measurement
    session.close()
    store.flush()
    # The next start restores the per-user history from the scored replies (once).
    t0, c0 = time.perf_counter(), time.process_time()
    restored = restore_history(store, ExampleHistory(keep=HISTORY_KEPT))
    restore_wall, restore_cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
    store.close()

    def p95(values):
        return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]
    result = {"replies": args.replies, "samples_per_reply": samples,
              "score_ms_p50": round(statistics.median(wall), 2), "score_ms_p95": round(p95(wall), 2),
              "score_cpu_ms_p50": round(statistics.median(cpu), 2), "score_cpu_ms_p95": round(p95(cpu), 2),
              "read_back_ms_p50": round(statistics.median(read_wall), 2),
              "history_restored": restored, "history_restore_ms": round(restore_wall, 1),
              "history_restore_cpu_ms": round(restore_cpu, 1),
              "model": model.info.get("version"), "model_columns": len(model.names),
              "loadavg_1m": round(os.getloadavg()[0], 2)}
    print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
