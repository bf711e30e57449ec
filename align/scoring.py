"""The reward model at work: score each reply the user has read, and judge sibling replies
for the nightly pairs.

capture → store → **features → reward** → pairs: when a reply leaves the screen, the app
hands its ``shown_replies`` id to :class:`ReplyScorer`; a background thread reads the
reading trace back from the store (``store.traces``), computes the same features as the
evaluation (``align.examples.followup_row``: this reply against the previous reply of
the conversation, with the time until the next message) and stores the installed
pointwise model's P(this reply satisfied more than the previous one) with the features
that moved it most (``store.scores``). numpy only: scikit-learn is never imported by the
app.

``score_judge`` turns the stored scores into ``align.pairs.Judge`` for siblings nobody
labelled: a regenerated reply was scored against the one it replaced, so its score *is*
P(new ≻ old).
"""
from __future__ import annotations

import json
import math
import queue
import threading
import warnings
from pathlib import Path

from .reward import RewardModel

POINTWISE = "pointwise"
TRACES_KEPT = 4       # recent traces ReplyScorer keeps: a reply is scored against the one before
# The scored replies the per-user history holds, also read back when the app starts to
# restore it (each costs about a scoring's CPU, once, on the scorer's thread:
# bench/reward_scoring.py). Training centres on all of a user's earlier rows; the mean of
# the last 100 is as good with the centring's shrinkage, and the same limit on both sides
# keeps a restart from changing any score.
HISTORY_KEPT = 100
ERRORS_KEPT = 20      # a scorer failing on every reply must not grow without end


def model_dir(data_dir: Path) -> Path:
    """Where ``align reward train`` writes model files by default."""
    return Path(data_dir) / "reward"


def newest_model(directory: Path, task: str = POINTWISE) -> RewardModel | None:
    """The newest ``reward-<task>-<stamp>.json`` under ``directory`` that loads and
    scores, or None."""
    for path in sorted(Path(directory).glob(f"reward-{task}-*.json"), reverse=True):
        try:
            model = RewardModel.load(path)
            _score_a_blank_reply(model)
        except Exception:  # noqa: BLE001 - any file that does not load is skipped, whatever is wrong
            continue
        model.info.setdefault("version", path.stem.rsplit("-", 1)[-1])
        model.info["file"] = path.name
        return model
    return None


KEPT_MODELS = 3       # files per task: the newest, and two to fall back on if it is damaged


def prune_models(directory: Path, task: str) -> list[str]:
    """Remove all but the newest :data:`KEPT_MODELS` model files of ``task`` (every
    training wrote one more, and none went)."""
    paths = sorted(Path(directory).glob(f"reward-{task}-*.json"), reverse=True)
    for path in paths[KEPT_MODELS:]:
        path.unlink(missing_ok=True)
    return [path.name for path in paths[KEPT_MODELS:]]


def retire_models(store, directory: Path, unlisted: bool = False) -> list[str]:
    """Remove the model files that learned from a conversation or pick no longer stored
    (``info.live_ids`` lists the user's rows a model learned: pick and conversation ids).
    Deleting a conversation deletes what was derived from it: adapters were retired, these
    models (fitted to its picks and reading) were kept. Run with the adapters' check
    (``tidy_training``: after a deletion and at every app start), so a model fitted while
    a conversation was deleted, and written after, goes too. ``unlisted`` (at a deletion):
    also a file from before that list that learned from the user's labels, as nothing says
    which. The study prior alone stays; the scorer follows the files."""
    learned = {}
    for path in sorted(Path(directory).glob("reward-*-*.json")):
        try:
            info = json.loads(path.read_text()).get("info") or {}
            if info.get("live_pairs"):
                ids = info.get("live_ids")
                learned[path] = None if ids is None else set(map(str, ids))
        except (OSError, ValueError, AttributeError, TypeError):
            continue                     # not ours to judge: passed over by the loader too
    listed = set().union(*(ids for ids in learned.values() if ids))
    present = ({c.id for c in store.conversations.list()}
               | {pick["id"] for pick in store.conversations.picks()}) if listed else set()
    removed = []
    for path, ids in learned.items():
        if (ids is None and unlisted) or (ids and ids - present):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _score_a_blank_reply(model: RewardModel) -> None:
    """Raises unless ``model`` can score: a file whose fitted parts (expected reading,
    index scales) do not fit the columns loads, and then failed on every reply while an
    older whole file was passed over."""
    from feedback_store.trace import PairTrace, ReadingTrace
    from .examples import followup_row, model_row, pair_row

    blank = ReadingTrace.build(t_ms=[], offset=[], text="A reply.", line_starts=[0], origin="live")
    row, fa, fb = followup_row(blank, blank, "", "", 0.0, 0.0) if model.task == POINTWISE \
        else pair_row(PairTrace(blank, blank), "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model.score(model_row(model, row, fa, fb))


# A reply is read as new once, when it is first shown; that reading is what is scored, as
# in the study (each answer read as it came). Reopening a conversation shows its replies
# again, all at once and in no set order: those later showings are re-reads, neither
# scored nor compared with. Keeps each message's first showing of the rows selected.
FIRST_SHOWING = "QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY shown_wall_ns, id) = 1"


# A reply first shown this long after it was written was shown before: its first showings
# expired with the retention period (a chat reopened after 90 days, or after the period was
# shortened), and this one is a re-read of all its replies at once.
NEW_REPLY_NS = 15 * 60 * 10**9


def is_first_showing(store, shown: dict) -> bool:
    rows = store._rows("SELECT s.id, s.shown_wall_ns, m.created_wall_ns FROM shown_replies s "
                       "LEFT JOIN messages m ON m.id = s.message_id WHERE s.message_id = ? "
                       "ORDER BY s.shown_wall_ns, s.id LIMIT 1", (shown["message_id"],))
    if not rows or rows[0]["id"] != shown["id"]:
        return False
    written = rows[0]["created_wall_ns"]
    return written is None or rows[0]["shown_wall_ns"] - written <= NEW_REPLY_NS


def previous_shown(store, shown: dict) -> dict | None:
    """The reply a shown reply is compared with: the other reply of its conversation first
    shown most recently before it (``shown`` needs ``conversation_id``, ``message_id``,
    ``shown_wall_ns``)."""
    # A message shown at all before this one was first shown before it too, so filtering
    # by time before keeping first showings keeps the right ones.
    rows = store._rows(
        "SELECT id, message_id, conversation_id, shown_wall_ns FROM shown_replies "
        "WHERE conversation_id = ? AND message_id <> ? "
        f"AND shown_wall_ns < ? {FIRST_SHOWING} ORDER BY shown_wall_ns DESC LIMIT 1",
        (shown["conversation_id"], shown["message_id"], shown["shown_wall_ns"]))
    return rows[0] if rows else None


def _reply_context(store, shown: dict) -> tuple[str, dict | None, str]:
    """(the prompt of this reply, the previous shown reply of its conversation or None,
    the prompt of that one)."""
    def prompt_of(message_id):
        rows = store._rows("SELECT p.content FROM messages m JOIN messages p ON p.id = m.parent_id "
                           "WHERE m.id = ?", (message_id,))
        return (rows[0]["content"] or "") if rows else ""
    previous = previous_shown(store, shown)
    return (prompt_of(shown["message_id"]), previous,
            prompt_of(previous["message_id"]) if previous else "")


def _example(store, shown_reply_id: str, traces: dict) -> tuple | None:
    """(the shown reply's row, its previous shown reply or None, the columns and per-side
    features) as training builds them, or None if the store no longer has it or this is
    not the reply's first showing. ``traces`` (shown id → (ReadingTrace, ReplyActivity))
    serves and keeps what was read."""
    from .examples import followup_row
    from .features import interaction_features

    shown = store.traces.shown_reply(shown_reply_id)
    if shown is None or not is_first_showing(store, shown):
        return None
    query, previous, previous_query = _reply_context(store, shown)

    def read(row, until_ms=math.nan):
        """The reply's reading until the user moved on (or ``until_ms``, if that is
        earlier), how long that was, and what else they did with it meanwhile."""
        if row["id"] in traces:
            whole, activity = traces[row["id"]]
        else:
            full = row if row is shown else store.traces.shown_reply(row["id"])
            whole, activity = store.traces.read(row["id"], shown=full)
            # Kept only once its showing has ended: a reply still on screen (the one above,
            # scrolled back to) goes on being read, and is read afresh when it is scored.
            if math.isfinite(whole.shown_for_ms):
                traces[row["id"]] = (whole, activity)
        until_next = min((t for t in (activity.next_message_ms, until_ms) if not math.isnan(t)),
                         default=math.nan)
        left_first = whole.shown_for_ms <= until_next     # False while still on screen (NaN)
        if math.isfinite(until_next) and not left_first:
            return whole.before(until_next), until_next, interaction_features(activity, until_next)
        end = whole.shown_for_ms if math.isfinite(whole.shown_for_ms) else math.inf
        return whole, whole.shown_for_ms, interaction_features(activity, end)
    current, shown_for, current_did = read(shown)
    if previous:
        # The reply compared with may still be on screen when this one leaves it (Compare,
        # the original kept): its reading counts until this one left, on the clock of its
        # own showing. Read later (a restart, training), it had gone on: cut at the same
        # moment, or the same reply got other columns each time.
        left_ms = (shown["shown_wall_ns"] - previous["shown_wall_ns"]) / 1e6 + current.shown_for_ms
        before, before_for, before_did = read(previous, left_ms)
    else:
        before, before_for, before_did = current, shown_for, current_did
    shown_for = shown_for if math.isfinite(shown_for) else 0.0
    before_for = before_for if math.isfinite(before_for) else shown_for
    row, fa, fb = followup_row(current, before, query, previous_query if previous else query,
                               shown_for, before_for, current_did, before_did)
    return shown, previous, row, fa, fb


def recent_scores(store, limit: int = 20) -> list[dict]:
    """The newest scored replies, newest first, for people to read what the reward model
    made of them: when, the conversation, the prompt, the reply and the reply it was
    compared with (``same_prompt``: another reply to the same prompt, e.g. the one it
    replaced), P(this one satisfied more), the model and the features that moved it most
    (signed log-odds). Scores exist only with the personalisation consent and go
    with their conversation."""
    rows = store._rows(
        "SELECT s.scored_wall_ns, s.probability, s.model, s.contributions, s.message_id, "
        "s.previous_message_id, coalesce(c.title, '') AS title, q.content AS prompt, "
        "m.content AS reply, p.content AS previous, "
        "coalesce(p.parent_id = m.parent_id, false) AS same_prompt "
        "FROM reply_scores s JOIN messages m ON m.id = s.message_id "
        "LEFT JOIN messages q ON q.id = m.parent_id "
        "LEFT JOIN messages p ON p.id = s.previous_message_id "
        "LEFT JOIN conversations c ON c.id = s.conversation_id "
        "ORDER BY s.scored_wall_ns DESC, s.shown_reply_id LIMIT ?", (int(limit),))
    for row in rows:
        row["contributions"] = json.loads(row["contributions"] or "[]")
    return rows


def score_shown_reply(store, model: RewardModel, shown_reply_id: str, top: int = 5,
                      traces: dict | None = None, history=None, record=None) -> dict | None:
    """Score one shown reply with a pointwise model; None if the store no longer has it
    or it is a later showing of a reply (only the first is scored).
    The first reply of a conversation is compared with itself (every difference zero):
    its score then rests on what needs no comparison, such as the time to the next message.
    ``traces`` (shown id → ReadingTrace), when given, serves and keeps the traces read:
    the previous reply's was read when it was scored (a hidden reply's trace is final).
    ``history`` (``examples.ExampleHistory``), when given, holds the replies scored before
    this one: the per-user columns are centred on them as in training, and this reply
    joins them. Without it every reply counts as the user's first. ``record(score)``,
    when given, keeps the score: one it refuses (paused, incognito, deleted meanwhile) is
    not kept in the history either, so the history is what a restart restores."""
    from .examples import model_row

    example = _example(store, shown_reply_id, {} if traces is None else traces)
    if example is None:
        return None
    shown, previous, row, fa, fb = example
    with warnings.catch_warnings():
        # Columns the model file has no fitted parts for come out NaN (numpy warns about
        # the empty means): they count as average, which is what the model expects.
        warnings.simplefilter("ignore", RuntimeWarning)
        shown_ms = float(shown["shown_wall_ns"]) / 1e6
        features = model_row(model, row, fa, fb, order=shown_ms,
                             history=history.table if history is not None else None)
    probability, contributions = model.score(features, top=top)
    score = {"shown_reply_id": shown_reply_id, "message_id": shown["message_id"],
             "conversation_id": shown["conversation_id"],
             "previous_message_id": previous["message_id"] if previous else None,
             "model": str(model.info.get("version")), "task": model.task,
             "probability": probability, "contributions": contributions}
    if record is not None and not record(score):
        return None
    if history is not None:
        history.add(row, fa, fb, order=shown_ms, conversation_id=shown["conversation_id"])
    return score


def restore_history(store, history) -> int:
    """Refill an empty ``history`` with the replies scored before this start (the newest
    ``history.keep``, oldest first), their rows recomputed from the traces still stored;
    returns how many. Training centres a user's row on their earlier rows, so a new start
    must not make the next reply count as the user's first. Only scored replies come back:
    a deleted conversation's or an expired reply's score is gone with its samples, and
    without the personalisation consent nothing was scored. A reply that cannot be read
    back is skipped (the rest still count)."""
    rows = store._rows(
        "SELECT r.id FROM shown_replies r WHERE EXISTS "
        "(SELECT 1 FROM reply_scores s WHERE s.shown_reply_id = r.id) "
        "ORDER BY r.shown_wall_ns DESC, r.id DESC LIMIT ?", (history.keep,))
    traces: dict = {}
    restored = 0
    for row in reversed(rows):
        try:
            example = _example(store, row["id"], traces)
        except Exception:  # noqa: BLE001 - one unreadable old reply must not cost the others
            continue
        if example is None:
            continue
        shown, _, columns, fa, fb = example
        history.add(columns, fa, fb, order=float(shown["shown_wall_ns"]) / 1e6,
                    conversation_id=shown["conversation_id"])
        restored += 1
    return restored


class ReplyScorer:
    """Scores shown replies on its own thread, so the window never waits for it.

    ``submit`` queues a ``shown_replies`` id (cheap, any thread); the thread scores it with
    the newest installed pointwise model (looked up again when the folder changes) and
    records it through the store. Without a model file nothing is scored.
    """

    def __init__(self, store, directory: Path | None = None, on_scored=None):
        self.store = store
        self.directory = Path(directory) if directory else model_dir(store.data_dir)
        self.on_scored = on_scored
        self.scored = 0
        self.failed = 0
        self.errors: list[str] = []      # the last ERRORS_KEPT failures, newest last
        self._queue: queue.Queue = queue.Queue()
        self._model: RewardModel | None = None
        self._model_stamp = None
        self._traces: dict = {}          # the last replies' traces (the next one's "previous")
        # The replies scored before, for the per-user centring of the next, as in training:
        # an examples.ExampleHistory made on the scorer's thread when it first scores and
        # restored from the store (restore_history), so align.examples is not imported
        # while the window starts.
        self.history = None
        self.restored = 0
        self._thread = threading.Thread(target=self._run, name="glance-reply-scorer", daemon=True)
        self._thread.start()

    def submit(self, shown_reply_id: str) -> None:
        self._queue.put(shown_reply_id)

    def forget_conversation(self, conversation_id: str) -> None:
        """A deleted conversation's replies stop counting in the per-user history."""
        self._queue.put(("forget", conversation_id))

    def wait(self, timeout: float = 30.0) -> bool:
        """Until everything submitted so far is scored (tests, shutdown); False if that
        took longer than ``timeout``."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def state(self) -> dict:
        """How scoring goes in this window (for `glance doctor`): replies scored and failed
        since it opened, the newest failure, the model file it scores with."""
        model = self._model
        return {"scored": self.scored, "failed": self.failed,
                "last_error": self.errors[-1] if self.errors else None,
                "model": model.info.get("file") if model is not None else None}

    def model(self) -> RewardModel | None:
        try:
            stamp = sorted(p.name for p in self.directory.glob(f"reward-{POINTWISE}-*.json"))
        except OSError:
            stamp = []
        if stamp != self._model_stamp:
            self._model_stamp = stamp
            self._model = newest_model(self.directory) if stamp else None
        return self._model

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if isinstance(item, tuple):          # ("forget", conversation id)
                self._forget(item[1])
                continue
            try:
                model = self.model()
                if model is None or not self.store.consent.is_on("personalise") \
                        or self.store.consent.paused:
                    continue           # nothing to score with, or nowhere it may be kept
                self.store.flush()     # its hidden time and last samples were only queued
                if self.history is None:
                    from .examples import ExampleHistory
                    history = ExampleHistory(keep=HISTORY_KEPT)
                    self.restored = restore_history(self.store, history)
                    self.history = history
                score = score_shown_reply(self.store, model, item, traces=self._traces,
                                          history=self.history,
                                          record=lambda score: self.store.scores.record(**score))
                for stale in list(self._traces)[:-TRACES_KEPT]:
                    del self._traces[stale]
            except Exception as error:  # noqa: BLE001 - one bad trace must not stop scoring
                self.failed += 1
                self.errors.append(f"{type(error).__name__}: {error}")
                del self.errors[:-ERRORS_KEPT]
                continue
            if score is None:
                continue
            self.scored += 1
            if self.on_scored is not None:
                self.on_scored(score)

    def _forget(self, conversation_id: str) -> None:
        if self.history is not None:
            self.history.forget(conversation_id)
        self._traces.clear()   # cheap to read again; a deleted reply's trace must not linger


def score_judge(rows: dict):
    """An ``align.pairs.Judge`` from the training rows' ``reply_scores`` (None when there
    are none). Only replies scored against each other are judged: a regenerated reply is
    scored against the one it replaced, so its score is P(new ≻ old). Two replies each
    scored against something else are not compared (their scores answer other questions)."""
    from .pairs import Judgement

    latest = {}
    for row in rows.get("reply_scores", []):
        latest[row["message_id"]] = row           # rows come oldest first
    if not latest:
        return None

    def judge(a: dict, b: dict):
        sa, sb = latest.get(a["id"]), latest.get(b["id"])
        if sb is not None and sb["previous_message_id"] == a["id"]:
            return Judgement(1.0 - sb["probability"])
        if sa is not None and sa["previous_message_id"] == b["id"]:
            return Judgement(sa["probability"])
        return None
    return judge
