"""The reward model at work on live data: a reply that leaves the screen is scored from its
reading trace against the reply shown before it, the score is stored with its top
features (only with the personalisation consent, gone with its conversation), and the
nightly pairs use it to order siblings nobody labelled."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from align.pairs import build_pairs
from align.reward import RewardModel
from align.scoring import model_dir, newest_model, score_judge
from app.session import AppSession, ReplyOnScreen
from feedback_store import Conversation, Message
from feedback_store.samples import PointerSample, ReplyAction, ViewportEvent

TEXT = "Bees dance to tell the hive where flowers are. The dance points at the sun."


def pointwise_model(directory, stamp="20261206T000000Z"):
    """A pointwise model file as `align reward train` writes it: more dwell on this reply
    than on the previous one, and a longer stay before the next message, mean better."""
    names = ["i_d_m_dwell_ms", "i_next_message_log_s"]
    model = RewardModel(task="pointwise", names=names, fill=np.zeros(2), centre=np.zeros(2),
                        scale=np.ones(2), coef=np.array([1.5, 0.2]), intercept=0.0,
                        info={"version": stamp})
    return model.save(directory / f"reward-pointwise-{stamp}.json")


def show_and_read(store, session, conversation_id, message_id, moves, during=None, lines=1):
    """Show a reply (laid out on ``lines`` lines), move the pointer over its words
    ``moves`` times (20 ms apart), call ``during(shown_id)`` if given, hide it."""
    starts = [len(TEXT) * i // lines for i in range(lines)] + [len(TEXT)]
    shown_id = session.reply_shown(ReplyOnScreen(
        message_id, conversation_id, (0, 0, 600, 20 * lines), 1.0, TEXT,
        [{"line": i, "start": starts[i], "end": starts[i + 1], "x": 0, "y": 20 * i, "w": 600,
          "h": 20} for i in range(lines)]))
    store.flush()
    start = time.monotonic_ns()
    rows = [PointerSample(session.id, shown_id, conversation_id, start + i * 20_000_000,
                          time.time_ns(), "move", x=10.0 + i, y=10.0,
                          text_offset=(i * 3) % len(TEXT), line=0)
            for i in range(moves)]
    assert store.samples.submit(rows)
    if during is not None:
        during(shown_id)
    store.flush()
    session.replies_hidden(keep=set())
    return shown_id


def regenerated_pair(store):
    conversation = store.conversations.create(Conversation(title="bees"))
    question = store.conversations.add_message(Message(conversation.id, "user", "How do bees talk?"))
    first = store.conversations.add_message(Message(conversation.id, "assistant", TEXT,
                                                    parent_id=question.id))
    second = store.conversations.add_message(Message(conversation.id, "assistant", TEXT + " Really.",
                                                     parent_id=question.id))
    return conversation, first, second


def read_pair_and_pick(store, session, value, left_moves=5, right_moves=40):
    """Two replies to one prompt read one after the other, then a side-by-side pick
    (+1 left, -1 right, 0 tie)."""
    conversation, left, right = regenerated_pair(store)
    show_and_read(store, session, conversation.id, left.id, moves=left_moves)
    show_and_read(store, session, conversation.id, right.id, moves=right_moves)
    store.conversations.record_pick(conversation.id, left.id, right.id, value)
    return conversation, left, right


def two_replies_scored(store):
    """With the consents and a model that favours dwell: a reply, then another reply to the
    same prompt read far longer, both scored. (session, conversation, first, second)"""
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    pointwise_model(model_dir(store.data_dir))
    session = AppSession(store)
    conversation, first, second = regenerated_pair(store)
    show_and_read(store, session, conversation.id, first.id, moves=5)
    show_and_read(store, session, conversation.id, second.id, moves=60)   # read far longer
    session.scorer.wait()
    assert session.scorer.errors == []
    return session, conversation, first, second


def test_a_reply_hidden_while_collection_is_paused_is_neither_scored_nor_remembered(store):
    """The scorer asked for the consent, not the pause: the store refused the score, and
    the reply still joined the per-user history, which a restart then restored without it."""
    session, conversation, first, second = two_replies_scored(store)
    assert session.scorer.scored == 2 and len(session.scorer.history) == 2
    third = store.conversations.add_message(Message(conversation_id=conversation.id, role="assistant",
                                                    content=TEXT, parent_id=first.parent_id))
    show_and_read(store, session, conversation.id, third.id, moves=30,
                  during=lambda shown_id: store.consent.set_paused(True))
    session.scorer.wait()
    assert session.scorer.scored == 2 and len(session.scorer.history) == 2
    assert store.scores.for_message(third.id) == []
    # Scored anyway (the scorer's own pause check passed over, as when the pause comes
    # between that check and the store's): the store refuses, the history stays as it was.
    from align.scoring import score_shown_reply
    history = session.scorer.history
    [shown] = store._rows("SELECT id FROM shown_replies WHERE message_id = ?", (third.id,))
    assert score_shown_reply(store, session.scorer.model(), shown["id"])["probability"] > 0
    assert score_shown_reply(store, session.scorer.model(), shown["id"],
                             history=history, record=lambda score: store.scores.record(**score)) is None
    assert len(history) == 2 and store.scores.for_message(third.id) == []
    session.close()


def test_a_score_expires_with_the_showing_it_was_made_from(store):
    """Scores expired by when they were made, after the reply left the screen: a reply
    shown for a while kept its score after its showing and samples had expired."""
    session, conversation, first, second = two_replies_scored(store)
    store.flush()
    [score] = store._rows("SELECT scored_wall_ns FROM reply_scores WHERE message_id = ?", (second.id,))
    latest = max(store._rows(f"SELECT max({column}) AS t FROM {table}")[0]["t"] or 0 for table, column in
                 (("shown_replies", "shown_wall_ns"), ("pointer_samples", "wall_ns")))
    assert latest < score["scored_wall_ns"]            # (else this test could not fail)
    store.apply_retention(now_wall_ns=latest + 1 + store.settings.retention_days * 86_400 * 10**9)
    assert store.counts()["shown_replies"] == 0 and store.counts()["reply_scores"] == 0
    session.close()


def test_a_model_file_whose_fitted_parts_do_not_fit_is_passed_over(tmp_path):
    """Only the coefficients were checked against the columns: a file with damaged
    expected-reading parts loaded, was taken as the newest, and failed every reply while
    the older whole file was passed over."""
    from align.examples import EXPECTATION_TEXT, OBSERVED
    whole = pointwise_model(tmp_path, stamp="20261201T000000Z")
    data = json.loads(whole.read_text())
    data["expected_reading"] = {"models": {name: {"ridge": 1.0, "mean": [0.0] * 2, "scale": [1.0] * 2,
                                                  "coef": [0.0] * 2, "intercept": 0.0} for name in OBSERVED},
                                "index_scale": {}, "observed": list(OBSERVED), "text": list(EXPECTATION_TEXT)}
    (tmp_path / "reward-pointwise-20261202T000000Z.json").write_text(json.dumps(data))
    assert newest_model(tmp_path).info["file"] == whole.name


def test_a_read_reply_is_scored_against_the_one_before_and_orders_the_siblings(store):
    session, conversation, first, second = two_replies_scored(store)
    store.flush()
    [before] = store.scores.for_message(first.id)
    [after] = store.scores.for_message(second.id)
    assert before["previous_message_id"] is None                 # the first reply: nothing before
    assert after["previous_message_id"] == first.id
    assert after["probability"] > 0.7 and after["model"] == "20261206T000000Z"
    assert after["contributions"][0][0] == "i_d_m_dwell_ms" and after["contributions"][0][1] > 0

    # The nightly pairs: nobody labelled these siblings, the reward model orders them.
    rows = store.training.rows()
    judge = score_judge(rows)
    assert judge({"id": first.id}, {"id": second.id}).p_a_over_b < 0.3
    pairs, report = build_pairs(rows, judge=judge)
    [pair] = pairs
    assert (pair.source, pair.chosen_id, pair.rejected_id) == ("reward", second.id, first.id)
    assert 0 < pair.epsilon < 0.3

    store.delete_conversation(conversation.id, compact=False)
    assert store.scores.for_message(second.id) == []
    session.close()


def test_a_reopened_conversation_is_not_scored_again_and_keeps_its_comparisons(store):
    """Reopening a conversation shows its replies again, all at once and in no particular
    order. Those re-showings were scored as new readings, each against whichever reply
    happened to be shown a moment before (a reply against the one *after* it, seen in the
    app), and the newest score of a regenerated reply then no longer compared it with the
    reply it replaced, so the nightly pairs lost it. A reply is read as new once: only
    its first showing is scored, against the reply first shown before it."""
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    pointwise_model(model_dir(store.data_dir))
    session = AppSession(store)
    conversation, first, second = regenerated_pair(store)
    follow_up = store.conversations.add_message(Message(conversation.id, "user", "And ants?",
                                                        parent_id=second.id))
    answer = store.conversations.add_message(Message(conversation.id, "assistant", TEXT,
                                                     parent_id=follow_up.id))
    for message, moves in ((first, 5), (second, 60), (answer, 20)):
        show_and_read(store, session, conversation.id, message.id, moves=moves)
    session.scorer.wait()
    assert session.scorer.errors == [] and session.scorer.scored == 3
    session.close()
    reopened = AppSession(store)                    # the app starts again on this chat
    for message in (answer, second):                # the active branch, shown anew
        show_and_read(store, reopened, conversation.id, message.id, moves=8)
    reopened.scorer.wait()
    assert reopened.scorer.errors == [] and reopened.scorer.history is not None  # it ran
    store.flush()
    scores = {m.id: [(s["previous_message_id"]) for s in store.scores.for_message(m.id)]
              for m in (first, second, answer)}
    assert scores == {first.id: [None], second.id: [first.id], answer.id: [second.id]}
    judge = score_judge(store.training.rows())
    assert judge({"id": first.id}, {"id": second.id}).p_a_over_b < 0.3
    reopened.close()


def test_a_chat_reopened_after_its_showings_expired_is_not_scored_as_new_reading(store):
    """Retention deletes a reply's showings with the other signals: reopened after 90
    days (or after the period was shortened), each reply's showing was its "first", and
    every reply was scored, all shown at once, without a next message."""
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    pointwise_model(model_dir(store.data_dir))
    conversation, first, second = regenerated_pair(store)
    long_ago = time.time_ns() - 100 * 86_400 * 10**9
    store._write("UPDATE messages SET created_wall_ns = ? WHERE conversation_id = ?",
                 (long_ago, conversation.id))
    session = AppSession(store)
    for message in (first, second):
        show_and_read(store, session, conversation.id, message.id, moves=20)
    session.scorer.wait()
    assert session.scorer.errors == [] and session.scorer.history is not None   # it ran
    store.flush()
    assert store.scores.for_message(first.id) == store.scores.for_message(second.id) == []
    session.close()


def test_a_reply_is_read_until_the_next_message_not_until_it_leaves_the_screen(store):
    """The study's window of an answer ends at the next query, and the model's "time to
    the next message" is that length. A reply stays on screen under the next turns, so
    the time it left the screen measured how long the conversation stayed open, and the
    pointer's visits after the next message counted as reading this reply."""
    from align import features as F
    from align.scoring import _example
    from feedback_store.trace import MOUSE
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    RewardModel(task="pointwise", names=["i_next_message_log_s"], fill=np.zeros(1),
                centre=np.zeros(1), scale=np.ones(1), coef=np.ones(1), intercept=0.0,
                info={"version": "next"}).save(model_dir(store.data_dir) / "reward-pointwise-next.json")
    session = AppSession(store)
    conversation = store.conversations.create(Conversation(title="bees"))
    question = store.conversations.add_message(Message(conversation.id, "user", "How do bees talk?"))
    reply = store.conversations.add_message(Message(conversation.id, "assistant", TEXT,
                                                    parent_id=question.id))
    shown_id = session.reply_shown(ReplyOnScreen(
        reply.id, conversation.id, (0, 0, 600, 40), 1.0, TEXT,
        [{"line": 0, "start": 0, "end": len(TEXT), "x": 0, "y": 0, "w": 600, "h": 20}]))

    def read(count):
        start = time.monotonic_ns()
        assert store.samples.submit([
            PointerSample(session.id, shown_id, conversation.id, start + i * 20_000_000,
                          time.time_ns(), "move", x=10.0 + i, y=10.0, text_offset=i * 3, line=0)
            for i in range(count)])
        time.sleep(count * 0.02 + 0.05)
    read(10)
    store.conversations.add_message(Message(conversation.id, "user", "And ants?", parent_id=reply.id))
    read(10)                                   # back on this reply while the next one streams
    time.sleep(0.3)
    session.replies_hidden(keep=set())
    session.scorer.wait()
    store.flush()
    [score] = store.scores.for_message(reply.id)
    shown = store.traces.shown_reply(shown_id)
    sent = store.conversations.messages(conversation.id)[-1].created_wall_ns
    until_next_s = (sent - shown["shown_wall_ns"]) / 1e9
    whole = store.traces.for_shown_reply(shown_id)
    assert until_next_s < whole.shown_for_ms / 1000 - 0.3
    logit = np.log(score["probability"] / (1 - score["probability"]))
    assert abs(logit - np.log1p(until_next_s)) < 1e-6
    _, _, row, current, _ = _example(store, shown_id, {})
    until_next_ms = until_next_s * 1000
    assert current["m_dwell_ms"] == F.reading_features(whole.before(until_next_ms), MOUSE)["dwell_ms"]
    assert current["m_dwell_ms"] < F.reading_features(whole, MOUSE)["dwell_ms"]
    session.close()


def test_per_user_columns_are_centred_on_the_replies_scored_before_as_in_training(store):
    """A model on the user-centred dwell share: training centres each row on the same
    user's earlier rows, so the scorer must too. Reply 2 is read far more than reply 1;
    reply 3 exactly as much as reply 2 (raw share 0). Against this user's habit of
    reading the newer reply more, reply 3 falls below 0.5; scored as if it were the
    user's first row it would sit at exactly 0.5."""
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    names = ["i_user_share_m_dwell_ms"]
    RewardModel(task="pointwise", names=names, fill=np.zeros(1), centre=np.zeros(1), scale=np.ones(1),
                coef=np.array([3.0]), intercept=0.0, info={"version": "centred"}
                ).save(model_dir(store.data_dir) / "reward-pointwise-centred.json")
    session = AppSession(store)
    conversation = store.conversations.create(Conversation(title="bees"))
    replies = []
    for i, moves in enumerate((5, 60, 60)):
        question = store.conversations.add_message(Message(conversation.id, "user", f"Question {i}?"))
        reply = store.conversations.add_message(Message(conversation.id, "assistant", TEXT,
                                                        parent_id=question.id))
        show_and_read(store, session, conversation.id, reply.id, moves=moves)
        replies.append(reply)
    session.scorer.wait()
    assert session.scorer.errors == [] and len(session.scorer.history) == 3
    store.flush()
    [second] = store.scores.for_message(replies[1].id)
    [third] = store.scores.for_message(replies[2].id)
    assert second["probability"] > 0.6
    assert third["probability"] < 0.45
    # Deleting the conversation takes its replies out of the history at once.
    session.delete_conversation(conversation.id)
    session.scorer.wait()
    assert len(session.scorer.history) == 0 and session.scorer._traces == {}
    session.close()


def test_the_per_user_history_is_restored_when_the_app_starts_again(store):
    """Training centres a row on all of the user's earlier rows, not on those since some
    start: after a restart the scorer reads the scored replies back, so the next reply is
    scored exactly as without the restart (as the user's first it would sit at 0.5)."""
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    RewardModel(task="pointwise", names=["i_user_share_m_dwell_ms"], fill=np.zeros(1),
                centre=np.zeros(1), scale=np.ones(1), coef=np.array([3.0]), intercept=0.0,
                info={"version": "centred"}).save(model_dir(store.data_dir) / "reward-pointwise-centred.json")
    conversation = store.conversations.create(Conversation(title="bees"))

    def ask_and_read(session, i, moves):
        question = store.conversations.add_message(Message(conversation.id, "user", f"Question {i}?"))
        reply = store.conversations.add_message(Message(conversation.id, "assistant", TEXT,
                                                        parent_id=question.id))
        show_and_read(store, session, conversation.id, reply.id, moves=moves)
        session.scorer.wait()
        return reply

    first_run = AppSession(store)
    ask_and_read(first_run, 0, 5)
    ask_and_read(first_run, 1, 60)
    before = first_run.scorer.history.table
    first_run.close()

    second_run = AppSession(store)
    third = ask_and_read(second_run, 2, 60)
    assert second_run.scorer.errors == [] and second_run.scorer.restored == 2
    restored = second_run.scorer.history.table.subset([0, 1])
    assert restored.names == before.names and restored.ids == before.ids
    assert np.allclose(restored.X, before.X, equal_nan=True)
    store.flush()
    [score] = store.scores.for_message(third.id)
    assert score["probability"] < 0.45           # against the habit from before the restart
    # A deleted conversation's replies are not restored: their scores went with it.
    second_run.delete_conversation(conversation.id)
    second_run.close()
    third_run = AppSession(store)
    other = store.conversations.create(Conversation(title="other"))
    question = store.conversations.add_message(Message(other.id, "user", "Again?"))
    reply = store.conversations.add_message(Message(other.id, "assistant", TEXT, parent_id=question.id))
    show_and_read(store, third_run, other.id, reply.id, moves=60)
    third_run.scorer.wait()
    assert third_run.scorer.restored == 0 and len(third_run.scorer.history) == 1
    third_run.close()


def test_a_reply_compared_with_one_still_on_screen_gets_the_same_row_after_a_restart(store):
    """Compare, the original kept: the new reply leaves the screen first and is scored
    while the one it is compared with is still read. That one's reading then counted until
    the new reply's own end, and read back after a restart, until its own: the restored
    history (and the training rows) gave the same reply other columns."""
    from align.examples import ExampleHistory
    from align.scoring import restore_history
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    pointwise_model(model_dir(store.data_dir))
    session = AppSession(store)
    conversation, kept, new = regenerated_pair(store)
    layout = [{"line": 0, "start": 0, "end": len(TEXT), "x": 0, "y": 0, "w": 600, "h": 20}]
    shown = {}
    for message, moves in ((kept, 5), (new, 40)):
        shown[message.id] = session.reply_shown(ReplyOnScreen(
            message.id, conversation.id, (0, 0, 600, 20), 1.0, TEXT, layout))
        store.flush()
        start = time.monotonic_ns()
        assert store.samples.submit([PointerSample(session.id, shown[message.id], conversation.id,
                                                   start + i * 20_000_000, time.time_ns(), "move",
                                                   x=10.0 + i, y=10.0, text_offset=(i * 3) % len(TEXT),
                                                   line=0) for i in range(moves)])
        time.sleep(0.3)
    store.flush()
    session.replies_hidden(keep={kept.id})      # the new one leaves; the original stays
    session.scorer.wait()
    time.sleep(0.5)                              # and is read on
    session.replies_hidden(keep=set())
    session.scorer.wait()
    live = session.scorer.history.table
    session.close()
    store.flush()                               # (the scores were queued for the writer)
    restored = ExampleHistory(keep=10)
    assert restore_history(store, restored) == 2
    rows = [np.argsort(table.order) for table in (live, restored.table)]
    assert live.names == restored.table.names
    assert np.allclose(live.X[rows[0]], restored.table.X[rows[1]], equal_nan=True)


def test_a_pick_reads_the_showings_of_its_own_day_though_the_clock_restarted(store):
    """The showings of a pick were found by the monotonic clock, which starts again at
    each boot: the left reply shown yesterday at a later uptime than today's pair looked
    like the newest showing, and the pair got yesterday's zero."""
    second, day = 10**9, 86_400 * 10**9
    wall = 1_800_000_000 * second
    conversation, left, right = regenerated_pair(store)

    def shown(shown_id, message_id, wall_ns, mono_ns):
        store._write("INSERT INTO shown_replies (id, session_id, message_id, conversation_id, "
                     "shown_wall_ns, shown_mono_ns, screen_x, screen_y, width, height, "
                     "device_pixel_ratio, rendered_text, layout) VALUES (?, 's', ?, ?, ?, ?, 0, 0, "
                     "100, 20, 1.0, 'hi', '[]')", (shown_id, message_id, conversation.id, wall_ns, mono_ns))
    shown("yesterday-left", left.id, wall, 150 * second)               # uptime 150 s
    shown("today-left", left.id, wall + day + 100 * second, 100 * second)   # after a reboot
    shown("today-right", right.id, wall + day + 100 * second, 100 * second)
    store._write("INSERT INTO feedback (id, message_id, conversation_id, kind, value, wall_ns, "
                 "other_message_id, picked_mono_ns) VALUES ('p', ?, ?, 'pick', 1, ?, ?, ?)",
                 (left.id, conversation.id, wall + day + 200 * second, right.id, 200 * second))
    assert store.traces.pick_sides("p") == ("today-left", "today-right", 100 * second, 200 * second)
    # The same pick changed the next day, in another session: its time from the wall clock.
    store._write("UPDATE feedback SET wall_ns = ?, picked_mono_ns = ? WHERE id = 'p'",
                 (wall + 2 * day, 5 * second))
    assert store.traces.for_pick("p").pick_t_ms == pytest.approx((day - 100 * second) / 1e6)


def test_restore_takes_the_newest_scored_replies_once_each(store):
    """Restoring keeps the newest ``keep`` replies, a reply scored twice counts once, and a
    reply whose trace cannot be read back is skipped without costing the others."""
    from align.examples import ExampleHistory
    from align.scoring import restore_history
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    session = AppSession(store)
    conversation = store.conversations.create(Conversation(title="bees"))
    shown = []
    for i in range(3):
        question = store.conversations.add_message(Message(conversation.id, "user", f"Question {i}?"))
        reply = store.conversations.add_message(Message(conversation.id, "assistant", TEXT,
                                                        parent_id=question.id))
        shown_id = show_and_read(store, session, conversation.id, reply.id, moves=5 + i)
        for _ in range(2):       # scored twice (two model versions, say)
            assert store.scores.record(shown_id, reply.id, conversation.id, None, "v", "pointwise", 0.5, [])
        shown.append(shown_id)
    session.close()
    store.flush()
    newest = ExampleHistory(keep=2)
    assert restore_history(store, newest) == 2
    assert list(newest.table.order) == sorted(newest.table.order)
    everything = ExampleHistory(keep=10)
    assert restore_history(store, everything) == 3
    assert np.allclose(everything.table.X[1:], newest.table.X, equal_nan=True)   # the newest two
    # An unreadable layout on the oldest reply: it is skipped, and so is the reply scored
    # against it (its row needs that trace); the newest is still restored.
    store._write("UPDATE shown_replies SET layout = '{broken' WHERE id = ?", (shown[0],))
    assert restore_history(store, ExampleHistory(keep=10)) == 1


def test_the_scoring_model_learns_from_the_users_own_orderings_alone(store, capsys):
    """No study data: `align reward train` fits the pointwise model the app scores with on
    the user's picks between a reply and the one shown before it (and the pairwise model
    on the same picks)."""
    from align.cli import main
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    from feedback_store import FeedbackStore
    home = store.data_dir

    def picks(start, count):
        store = FeedbackStore.open(home)
        session = AppSession(store)
        for i in range(start, start + count):     # mostly the reply read longer is kept
            read_pair_and_pick(store, session, -1 if i % 3 else 1, right_moves=40 if i % 3 else 2)
        session.close()
        store.close()
    store.close()
    picks(0, 12)
    # Alone, a dozen labels would give confident, noisy scores: 30 are needed.
    assert main(["reward", "train", "--json"]) == 2
    assert "12; 30 with both outcomes needed" in capsys.readouterr().err
    picks(12, 18)
    assert main(["reward", "train", "--json"]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = RewardModel.load(written["pointwise"]["path"])
    assert model.task == "pointwise" and model.info["source"] == "live"
    assert written["pointwise"]["live_pairs"] == written["pointwise"]["train_rows"] == 30
    assert "path" in written["pairwise"] and written["pairwise"]["live_pairs"] == 30


def models_on_a_study_subset_then_picks(store, tmp_path, monkeypatch, picks: int = 3):
    """Reward models trained on a few study workers (as `align reward train --ifllm`),
    then ``picks`` of the user's own: (the study folder, what training wrote, the session)."""
    from align.ifllm import write_subset
    from align.train import train_ifllm
    from test_reward import IFLLM, WORKERS, require_ifllm
    require_ifllm()
    monkeypatch.setenv("GLANCE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    write_subset(IFLLM, study, WORKERS)
    before = train_ifllm(study, model_dir(store.data_dir))
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    session = AppSession(store)
    for i in range(picks):
        read_pair_and_pick(store, session, -1 if i % 3 else 1)
    return study, before, session


def test_the_nightly_refresh_retrains_on_new_labels_with_the_same_prior(store, tmp_path, monkeypatch):
    """`align.train.refresh` (the nightly job, app closed): retrains when there are new
    picks since the models were trained, with the study folder they were trained with,
    and not when nothing is new or that folder is gone."""
    from align.train import refresh
    study, before, session = models_on_a_study_subset_then_picks(store, tmp_path, monkeypatch)
    session.close()
    store.close()      # the nightly refreshes only while the app is closed
    done = refresh(store.data_dir)
    assert done["status"] == "trained" and done["labels"] == {"pairwise": 3, "pointwise": 3}
    for task in ("pairwise", "pointwise"):
        info = done["written"][task]
        assert info["live_pairs"] == 3 and info["train_rows"] == before[task]["train_rows"] + 3
        assert RewardModel.load(info["path"]).info["source"] == "ifllm+live"
    assert refresh(store.data_dir)["status"] == "up_to_date"
    # The user changes their mind on a pick: as many labels as before, one of them other
    # (compared by count, the models kept the first word).
    from feedback_store import FeedbackStore
    store = FeedbackStore.open(store.data_dir)
    [pick] = store._rows("SELECT conversation_id, message_id, other_message_id, value FROM feedback "
                         "WHERE kind = 'pick' ORDER BY wall_ns LIMIT 1")
    store.conversations.record_pick(pick["conversation_id"], pick["message_id"],
                                    pick["other_message_id"], -pick["value"])
    store.close()
    changed = refresh(store.data_dir)
    assert changed["status"] == "trained" and changed["labels"] == {"pairwise": 3, "pointwise": 3}, changed
    assert refresh(store.data_dir)["status"] == "up_to_date"
    # The study folder is gone: retraining without it would drop the prior, so it waits.
    import shutil
    shutil.rmtree(study)
    store = FeedbackStore.open(store.data_dir)
    session = AppSession(store)
    read_pair_and_pick(store, session, 1)
    session.close()
    store.close()
    done = refresh(store.data_dir)
    assert done["status"] == "skipped" and "is gone" in done["reason"]


def test_deleting_a_conversation_retires_the_reward_models_that_learned_from_it(store, tmp_path,
                                                                               monkeypatch):
    """Deleting a conversation retired the adapters that learned from it, but the reward
    models fitted to its picks and reading stayed (and every training added one more file,
    none ever went). The study-only models stay; three files a task are kept."""
    from align.scoring import KEPT_MODELS
    from align.train import refresh, train_ifllm
    from app.session import delete_conversation
    from feedback_store import FeedbackStore
    study, before, session = models_on_a_study_subset_then_picks(store, tmp_path, monkeypatch)
    session.close()
    picked = [row["conversation_id"] for row in store._rows(
        "SELECT conversation_id FROM feedback WHERE kind = 'pick' ORDER BY wall_ns")]
    store.close()
    directory = model_dir(store.data_dir)
    time.sleep(1.1)                       # (file names carry the second they were written)
    assert refresh(store.data_dir)["status"] == "trained"
    learned = {path.name for path in directory.glob("reward-*-*.json")} - \
        {Path(info["path"]).name for info in before.values()}
    assert len(learned) == 2
    for name in learned:
        info = json.loads((directory / name).read_text())["info"]
        assert info["live_pairs"] == 3 and info["live_ids"]
    store = FeedbackStore.open(store.data_dir)
    # A conversation none of them learned from: the ids are matched, nothing goes.
    unrelated = store.conversations.create(Conversation(title="unrelated")).id
    delete_conversation(store, unrelated)
    assert {path.name for path in directory.glob("reward-*-*.json")} == \
        learned | {Path(info["path"]).name for info in before.values()}
    delete_conversation(store, picked[1])
    store.close()
    kept = {path.name for path in directory.glob("reward-*-*.json")}
    assert kept == {Path(info["path"]).name for info in before.values()}   # the study's alone
    # With the study-only files gone too (pruned away by later trainings), the nightly
    # refresh still knows the prior (it read it from the newest model, and trained on
    # the user's two remaining picks alone: too few, so nothing, for good).
    for path in kept:
        (directory / path).unlink()
    time.sleep(1.1)
    again = refresh(store.data_dir)
    assert again["status"] == "trained", again
    for task in ("pairwise", "pointwise"):
        assert RewardModel.load(again["written"][task]["path"]).info["source"] == "ifllm+live"
    # Training over and over keeps the newest three of each task.
    for _ in range(KEPT_MODELS + 1):
        time.sleep(1.1)
        train_ifllm(study, directory)
    for task in ("pairwise", "pointwise"):
        assert len(list(directory.glob(f"reward-{task}-*.json"))) == KEPT_MODELS


def test_a_reward_model_written_after_its_conversation_was_deleted_is_retired(store):
    """A model is fitted for a while after its labels are read: one trained while a
    conversation was deleted landed after the deletion retired the others, and kept it.
    The check that follows every deletion and every start removes it."""
    from app.training_link import tidy_training
    kept = store.conversations.create(Conversation(title="kept")).id
    directory = model_dir(store.data_dir)
    directory.mkdir()
    for name, ids in (("reward-pointwise-20261208T000001Z.json", [kept]),
                      ("reward-pointwise-20261208T000002Z.json", [kept, "deleted-meanwhile"]),
                      ("reward-pairwise-20261208T000001Z.json", None)):    # (before the list)
        info = {"live_pairs": 3, **({"live_ids": ids} if ids is not None else {})}
        (directory / name).write_text(json.dumps({"info": info}))
    tidy_training(store, store.data_dir)
    assert sorted(p.name for p in directory.iterdir()) == [
        "reward-pairwise-20261208T000001Z.json", "reward-pointwise-20261208T000001Z.json"]


@pytest.mark.timeout(900)
def test_with_glance_open_the_app_hands_over_the_labels_for_the_reward_models(store, tmp_path,
                                                                              monkeypatch):
    """Glance often stays open overnight (in the tray). The reward models need the
    reading traces in the database the app holds, so they were never refreshed then, and
    `align reward train` left the user's own picks out. The app now computes the user's
    labelled rows for both and hands them over its socket."""
    from align.nightly import _refresh_reward_models
    from align.train import live_tables
    from app.training_link import TrainingLink
    study, before, session = models_on_a_study_subset_then_picks(store, tmp_path, monkeypatch)
    store.flush()
    expected = live_tables(store)
    link = TrainingLink(store, model_path=lambda: None).start()     # the app, open
    try:
        done = _refresh_reward_models(store.data_dir)
        assert link.served.count("reward_labels") == 1
        assert done["status"] == "trained" and done["labels"] == {"pairwise": 3, "pointwise": 3}
        for task in ("pairwise", "pointwise"):
            info = done["written"][task]
            assert info["live_pairs"] == 3 and info["train_rows"] == before[task]["train_rows"] + 3
        # The rows that crossed the socket are the rows the store gives.
        from align.nightly import labels_from_app
        from align.ipc import AppClient
        handed, _ = labels_from_app(AppClient.find(store.data_dir))
        for task in ("pairwise", "pointwise"):
            assert handed[task].names == expected[task].names
            assert np.array_equal(handed[task].X, expected[task].X, equal_nan=True)
            assert list(handed[task].y) == list(expected[task].y)
        assert _refresh_reward_models(store.data_dir)["status"] == "up_to_date"
        # `align reward train` with the app open includes the user's picks too.
        import os, subprocess, sys
        from conftest import ROOT
        done = subprocess.run([sys.executable, "-m", "align.cli", "reward", "train", "--ifllm",
                               str(study), "--json", "--out", str(tmp_path / "manual")],
                              capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env=dict(os.environ, GLANCE_HOME=str(store.data_dir),
                                       GLANCE_CACHE_DIR=str(tmp_path / "cache")))
        assert done.returncode == 0, done.stderr
        written = json.loads(done.stdout.strip().splitlines()[-1])
        assert written["pairwise"]["live_pairs"] == 3 and written["pointwise"]["live_pairs"] == 3
        # Personalisation turned off in the open window: none of the user's rows, and the
        # reason said is that one (it said they had to be read in the window).
        store.consent.set("personalise", False)
        done = subprocess.run([sys.executable, "-m", "align.cli", "reward", "train", "--ifllm",
                               str(study), "--task", "pairwise", "--out", str(tmp_path / "off")],
                              capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env=dict(os.environ, GLANCE_HOME=str(store.data_dir),
                                       GLANCE_CACHE_DIR=str(tmp_path / "cache")))
        assert done.returncode == 0, done.stderr
        assert "0 of them your own: personalisation is off" in done.stdout, done.stdout
    finally:
        link.stop()
        session.close()


def test_no_score_without_the_personalisation_consent_or_without_a_model(store):
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    session = AppSession(store)
    conversation, first, second = regenerated_pair(store)
    show_and_read(store, session, conversation.id, first.id, moves=5)     # consent, no model yet
    assert session.scorer.wait()
    pointwise_model(model_dir(store.data_dir))
    store.consent.set("personalise", False)
    show_and_read(store, session, conversation.id, second.id, moves=30)   # a model, no consent
    assert session.scorer.wait()
    store.flush()
    assert store.scores.for_message(first.id) == [] == store.scores.for_message(second.id)
    assert session.scorer.scored == 0 and session.scorer.errors == []
    assert session.scorer.history is None      # the scorer read nothing: not even the history
    assert "no_consent:personalise" not in store.consent.refused
    assert score_judge(store.training.rows()) is None
    # The store itself refuses a score without the consent, whoever computed it.
    assert not store.scores.record("s", second.id, conversation.id, first.id, "v", "pointwise", 0.9, [])
    store.flush()
    assert store.scores.for_message(second.id) == []
    assert store.consent.refused["no_consent:personalise"] == 1     # counted like samples
    session.close()


def test_a_model_trained_on_the_study_scores_live_replies(store):
    """The real pipeline: `align reward train` on the IFLLM study, then live traces."""
    from align.train import train_ifllm
    from test_reward import IFLLM, require_ifllm
    require_ifllm()
    written = train_ifllm(IFLLM, model_dir(store.data_dir), tasks=("pointwise",))
    for signal in ("pointer", "personalise"):
        store.consent.set(signal, True)
    session = AppSession(store)
    conversation, first, second = regenerated_pair(store)
    show_and_read(store, session, conversation.id, first.id, moves=5)
    show_and_read(store, session, conversation.id, second.id, moves=60)
    session.scorer.wait()
    assert session.scorer.errors == [] and session.scorer.scored == 2
    store.flush()
    [score] = store.scores.for_message(second.id)
    names = set(RewardModel.load(written["pointwise"]["path"]).names)
    assert 0 < score["probability"] < 1 and score["contributions"]
    assert {name for name, _ in score["contributions"]} <= names
    # the live reading moved it: reply 2 was read far longer than reply 1
    assert any(name.startswith("i_") and value != 0 and np.isfinite(value)
               for name, value in score["contributions"])
    session.close()


def test_align_reward_train_learns_from_the_users_own_picks_with_the_study_as_prior(store):
    from align.train import live_pairwise_turns, live_pointwise_table, live_tables, train_data
    from align.ifllm import read_ifllm
    from test_reward import IFLLM, require_ifllm
    require_ifllm()
    store.consent.set("pointer", True)
    session = AppSession(store)
    # A pick made before the personalisation consent is never learnt from (as the nightly).
    read_pair_and_pick(store, session, 1)
    assert live_pairwise_turns(store) == []          # no personalisation consent: none of it
    assert len(live_pointwise_table(store).y) == 0
    store.consent.set("personalise", True)
    picked, conversations = [], []
    for i in range(4):
        value = -1 if i % 2 == 0 else 1
        conversation, left, right = read_pair_and_pick(store, session, value, left_moves=5 + i)
        conversations.append(conversation.id)
        picked.append(value)
    store.conversations.record_pick(conversation.id, left.id, right.id, 0)   # a tie: no label
    # A label counts by its latest word: the last pair's pick was taken back as a tie.
    turns = live_pairwise_turns(store)
    assert [t.pair_label for t in turns] == [int(v == 1) for v in picked[:3]]
    assert turns[0].query == "How do bees talk?" and turns[0].pair.a.user_id == "local"
    assert len(turns[0].pair.b.t_ms) == 40           # the right reply's own samples
    # The same picks as pointwise labels, shaped as the app scores: the right reply (shown
    # second) against the left one shown before it; 1 when the right one was picked. The
    # last pair's latest pick is a tie, so it has no label.
    pointwise = live_pointwise_table(store)
    assert list(pointwise.y) == [int(v == -1) for v in picked[:3]]
    assert set(pointwise.groups) == {"local"} and list(pointwise.order) == sorted(pointwise.order)
    assert pointwise.ids == conversations[:3]

    live = live_tables(store)                  # both tasks' rows, as the app hands them over
    assert list(live["pairwise"].y) == [t.pair_label for t in turns]
    assert list(live["pointwise"].y) == list(pointwise.y)
    written = train_data(read_ifllm(IFLLM), store.data_dir / "reward", ("pairwise", "pointwise"),
                         live=live)
    assert written["pairwise"]["live_pairs"] == 3 and written["pairwise"]["train_rows"] == 519 + 3
    assert written["pairwise"]["train_users"] == 44 + 1          # the user is one more group
    assert written["pointwise"]["live_pairs"] == 3 and written["pointwise"]["train_rows"] == 434 + 3
    for task in ("pairwise", "pointwise"):
        assert RewardModel.load(written[task]["path"]).info["source"] == "ifllm+live"
    session.close()


def test_what_the_user_did_with_a_reply_besides_reading_it_becomes_model_columns(store, tmp_path,
                                                                                  monkeypatch):
    """Scroll depth, selection, copy and stop are measured per reading from the viewport
    events and reply actions, up to the end of the reading (the pick, or the reply leaving
    the screen), and given to the reward models as "this reply − the other"; thumbs and
    regenerations never are (they are labels, or how the pairs infer one)."""
    from align.features import interaction_features
    from align.scoring import _example
    from align.train import live_tables, train_data
    study, _, session = models_on_a_study_subset_then_picks(store, tmp_path, monkeypatch, picks=0)
    conversation, left, right = regenerated_pair(store)
    n_chars = len(TEXT)

    def act(shown_id, message_id, kind, start=None, end=None, value=None):
        session.record([ReplyAction(session.id, shown_id, conversation.id, message_id,
                                    time.monotonic_ns(), time.time_ns(), kind, start, end, value)])

    def view(shown_id, first, last):
        session.record([ViewportEvent(session.id, shown_id, conversation.id, time.monotonic_ns(),
                                      time.time_ns(), "scroll", first, last, 0.0, 0.0, True)])

    def on_left(shown_id):          # the left reply: its top half on screen, a thumb down
        view(shown_id, None, None)
        view(shown_id, 0, 0)
        act(shown_id, left.id, "thumb", value=-1.0)
        act(shown_id, left.id, "regenerate")

    def on_right(shown_id):         # the right reply: all of it on screen, selected, copied
        view(shown_id, 0, 1)
        act(shown_id, right.id, "select", 0, 10)
        act(shown_id, right.id, "select", 5, 20)     # the drag goes on: 20 characters in all
        act(shown_id, right.id, "copy", 5, 20)
    show_and_read(store, session, conversation.id, left.id, 5, during=on_left, lines=2)
    right_shown = show_and_read(store, session, conversation.id, right.id, 40, during=on_right, lines=2)
    store.conversations.record_pick(conversation.id, left.id, right.id, -1)
    act(None, left.id, "copy", 0, 30)           # after the pick and the left reply's reading
    store.flush()

    did = store.traces.activity(right_shown)
    assert did.action_kind == ("select", "select", "copy") and did.n_chars == n_chars
    assert 0 <= did.action_t_ms[0] <= did.action_t_ms[-1] < 10_000 and not did.stopped
    assert list(did.first_line) == [0] and list(did.last_line) == [1] and did.n_lines == 2

    _, _, row, _, _ = _example(store, right_shown, {})       # right (later) − left
    assert row["i_act_d_copied"] == 1.0                        # the left one's late copy: no
    assert row["i_act_d_selected_share"] == pytest.approx(20 / n_chars)
    assert row["i_act_d_lines_on_screen_share"] == 0.5 and row["i_act_d_stopped"] == 0.0
    assert not [name for name in row if "thumb" in name or "regenerat" in name]

    live = live_tables(store)
    [pairwise] = live["pairwise"].X                # a = left, b = right, up to the pick
    names = live["pairwise"].names
    assert pairwise[names.index("i_act_d_copied")] == -1.0
    assert pairwise[names.index("i_act_d_selected_share")] == pytest.approx(-20 / n_chars)
    assert pairwise[names.index("i_act_d_lines_on_screen_share")] == -0.5
    [pointwise] = live["pointwise"].X
    assert pointwise[live["pointwise"].names.index("i_act_d_copied")] == 1.0

    # A reply the user stopped (Esc or Stop, logged on it), shown after the right one; a
    # reply cancelled because the window closed was not stopped.
    stopped = store.conversations.add_message(Message(conversation.id, "assistant", "Bees",
                                                      parent_id=left.parent_id,
                                                      finish_reason="cancelled"))
    act(None, stopped.id, "stop")
    stopped_shown = show_and_read(store, session, conversation.id, stopped.id, 3, during=lambda shown_id:
                                  act(None, left.parent_id, "edit"))
    closed = store.conversations.add_message(Message(conversation.id, "assistant", "Bees dance",
                                                     parent_id=left.parent_id,
                                                     finish_reason="cancelled"))
    closed_shown = show_and_read(store, session, conversation.id, closed.id, 3)
    store.flush()
    assert store.traces.activity(stopped_shown).stopped
    assert not store.traces.activity(closed_shown).stopped
    _, previous, row, _, _ = _example(store, stopped_shown, {})
    assert previous["message_id"] == right.id and row["i_act_d_stopped"] == 1.0
    # The edit of their prompt is read too; it came after the right one's reading ended.
    assert store.traces.activity(stopped_shown).action_kind == ("edit",)
    right_read_ms = store.traces.for_shown_reply(right_shown).shown_for_ms
    assert store.traces.activity(right_shown).action_kind[-1] == "edit"
    assert interaction_features(store.traces.activity(right_shown), right_read_ms)["edited"] == 0.0
    assert interaction_features(store.traces.activity(stopped_shown))["edited"] == 1.0

    # The study has none of these columns; trained together, the model keeps them.
    from align.ifllm import read_ifllm
    written = train_data(read_ifllm(study), tmp_path / "models", live=live)
    for task in ("pairwise", "pointwise"):
        model = RewardModel.load(written[task]["path"])
        assert {f"i_act_d_{k}" for k in ("copied", "selected_share", "lines_on_screen_share", "stopped")} <= set(model.names)
        assert not [n for n in model.names if "thumb" in n or "regenerat" in n]
    session.close()


def test_align_reward_scores_shows_what_the_model_made_of_each_reply_open_or_closed(store, capsys):
    """`align reward scores`: the newest scored replies, in words, from the store or, with
    Glance open (it holds the database), from the app over its socket."""
    import os
    import subprocess
    import sys
    from align.cli import main
    from align.scoring import recent_scores
    from app.training_link import TrainingLink
    from conftest import ROOT
    from feedback_store import FeedbackStore
    store.close()
    assert main(["reward", "scores"]) == 0
    assert "No reply has been scored yet" in capsys.readouterr().out
    store = FeedbackStore.open(store.data_dir)
    session, conversation, first, second = two_replies_scored(store)
    store.flush()
    scores = recent_scores(store)
    assert [s["message_id"] for s in scores] == [second.id, first.id]      # newest first
    assert scores[0]["previous_message_id"] == first.id and scores[0]["title"] == "bees"
    assert scores[0]["reply"].endswith("Really.") and scores[0]["probability"] > 0.7

    link = TrainingLink(store, model_path=lambda: None).start()            # Glance, open
    try:
        env = dict(os.environ, GLANCE_HOME=str(store.data_dir))
        done = subprocess.run([sys.executable, "-m", "align.cli", "reward", "scores", "--json"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["scores"] == json.loads(json.dumps(scores))
        assert link.served[-1] == "reward_scores"
    finally:
        link.stop()
    session.close()
    store.close()
    assert main(["reward", "scores", "--limit", "1"]) == 0                   # closed: the store
    out = capsys.readouterr().out
    assert "bees" in out and "you asked “How do bees talk?”" in out
    assert "against another reply to it, “Bees dance" in out     # the one it replaced
    assert "P(this one better) = 0." in out and "pointer dwell" in out
    assert first.id not in out and "i_d_m_dwell_ms" not in out
    # The first reply of its conversation has nothing to be "better" than.
    assert main(["reward", "scores", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    first_said = out[out.index("the first reply of its conversation"):]
    assert "P(satisfied, read on its own) = 0." in first_said and "better" not in first_said
    assert main(["reward", "scores", "--limit", "0"]) == 2
    assert "--limit must be between 1 and 100000" in capsys.readouterr().err


def test_a_damaged_model_file_is_passed_over_for_the_newest_whole_one(tmp_path):
    """A model file cut short or edited by hand loaded, then failed on every reply."""
    from align.scoring import newest_model
    pointwise_model(tmp_path, stamp="20261205T000000Z")
    damaged = json.loads(pointwise_model(tmp_path, stamp="20261206T000000Z").read_text())
    damaged["coef"] = damaged["coef"][:1]
    (tmp_path / "reward-pointwise-20261206T000000Z.json").write_text(json.dumps(damaged))
    with pytest.raises(ValueError, match="is damaged: its parts do not match its 2 columns"):
        RewardModel.load(tmp_path / "reward-pointwise-20261206T000000Z.json")
    assert newest_model(tmp_path).info["version"] == "20261205T000000Z"
    # Valid JSON of the wrong shape loaded, and `glance doctor` itself then failed.
    for part, value in (("metrics", None), ("info", []), ("expected_reading", 3)):
        damaged = json.loads(pointwise_model(tmp_path, stamp="20261207T000000Z").read_text())
        damaged[part] = value
        (tmp_path / "reward-pointwise-20261207T000000Z.json").write_text(json.dumps(damaged))
        with pytest.raises(ValueError, match="is damaged: its expected_reading, metrics or info"):
            RewardModel.load(tmp_path / "reward-pointwise-20261207T000000Z.json")
        assert newest_model(tmp_path).info["version"] == "20261205T000000Z"


def test_doctor_says_how_scoring_goes_in_the_open_window(store):
    """Replies are scored on the window's own thread: one that could not be scored was only
    kept in a list nobody could see. `glance doctor`, asking the open window, says how many
    were scored and how many failed, with the newest reason."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    session, conversation, first, second = two_replies_scored(store)

    def damage_its_layout(shown_id):
        store._write("UPDATE shown_replies SET layout = '[{broken' WHERE id = ?", (shown_id,))
    third = store.conversations.add_message(Message(conversation.id, "assistant", TEXT + " Truly.",
                                                    parent_id=first.parent_id))
    show_and_read(store, session, conversation.id, third.id, moves=5, during=damage_its_layout)
    session.scorer.wait()
    assert session.start_training_link(model_path=lambda: None) is None      # Glance, open
    try:
        env = dict(os.environ, GLANCE_HOME=str(store.data_dir))
        done = subprocess.run([sys.executable, "-m", "app.cli", "doctor", "--json"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
        scoring = json.loads(done.stdout)["scoring"]
        assert scoring["scored"] == 2 and scoring["failed"] == 1, scoring
        assert scoring["last_error"].startswith("JSONDecodeError")
        assert scoring["model"] == "reward-pointwise-20261206T000000Z.json"
        text = subprocess.run([sys.executable, "-m", "app.cli", "doctor"], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, env=env).stdout
        assert "Scoring:  2 replies scored since the window opened; 1 could not be (last: " \
            "JSONDecodeError" in text, text
    finally:
        session.close()


def test_commands_say_when_the_nightly_job_holds_the_database(store):
    """The database held by the nightly job (a few seconds at its start and end), not by
    the app: the commands that would ask the app say so, instead of blaming an unknown
    program."""
    import os
    import subprocess
    import sys
    from align.locks import LOCK_FILE, TrainingLock
    from conftest import ROOT
    (store.data_dir / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GLANCE_HOME=str(store.data_dir))

    def run(*command):
        return subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                              cwd=ROOT, timeout=120, env=env)

    def scores():
        return run("align.cli", "reward", "scores")
    with TrainingLock(store.data_dir / LOCK_FILE):        # this process: the job, holding both
        done = scores()
        status = run("app.cli", "data", "status")
    assert done.returncode == 2 and "the nightly job is reading or saving" in done.stderr
    assert status.returncode == 2 and "the nightly job is reading or saving" in status.stderr
    done = scores()                 # a Glance process without a socket (this test) holds it
    assert done.returncode == 2 and f"(PID {os.getpid()})" in done.stderr
