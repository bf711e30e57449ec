"""`align reward train`: fit the reward models on the data given and save model files.

The data: the user's own side-by-side picks (consented, read back from the store as
reading traces, :func:`live_pairwise_turns`), optionally with research data as a prior
(an IFLLM-format folder, or the study imported into the store). Every source becomes
tables of the same form (``examples.pairwise_table`` / ``pointwise_table``); live picks
and study turns are rows of one table, grouped by user for the model's own
cross-validation.
"""
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import reward
from .evaluate import candidates, full_matrix
from .scoring import prune_models
from .features import interaction_features
from .examples import (Table, _concat_tables, _table, fitted_to_dict, fold_columns,
                       pairwise_table, pointwise_table)

TASKS = ("pairwise", "pointwise")
NO_DATA = {
    "pairwise": "no side-by-side picks of yours with their reading yet (Compare in the "
                "window, then Alt+1 / Alt+2: a pick counts once both replies were shown and "
                "read there) and no research prior (--ifllm DIR or --research)",
    "pointwise": "no reply of yours was picked or thumbed against the reply shown just "
                 "before it yet, and no research prior (--ifllm DIR or --research)",
}

CONSENT_OFF = ("your picks and thumbs are not used while the personalisation consent is off "
               "(glance consent set personalise on), and no research prior was given "
               "(--ifllm DIR or --research)")


MIN_ROWS = 10          # with a research prior (hundreds of rows) the user's own add to it
MIN_OWN_ROWS = 30      # the user's labels alone: fewer would give confident, noisy scores
                       # that the nightly pairs would trust


def train_table(table: Table, task: str, feature_set: str = "text_implicit", seed: int = 0,
                min_rows: int = MIN_ROWS) -> reward.RewardModel:
    """Fit every step on all of ``table`` (expectation, index scales, columns, C) and
    return a model that scores new examples without scikit-learn."""
    if len(table.y) < min_rows or len(np.unique(table.y)) < 2:
        raise ValueError(f"not enough labelled {task} examples to train on ({len(table.y)}; "
                         f"{min_rows} with both outcomes needed)")
    rows = np.arange(len(table.y))
    extra, extra_names, fitted = fold_columns(table, rows)
    X = np.column_stack([table.X, extra])
    names = table.names + extra_names
    model, _ = reward.fit(X, table.y, table.groups, symmetric=(task == "pairwise"), names=names,
                          task=task, seed=seed, candidates=candidates(names, feature_set),
                          matrix_for=lambda inner: full_matrix(table, inner)[0])
    model.expected_reading = fitted_to_dict(fitted)
    p = model.predict_proba(X[:, [names.index(n) for n in model.names]])
    model.metrics = {"train_rows": int(len(table.y)), "train_users": int(len(np.unique(table.groups))),
                     "train_accuracy": float(np.mean((p > 0.5) == (table.y == 1))),
                     "label_rate": float(np.mean(table.y))}
    return reward.describe(model, feature_set=feature_set, seed=seed)


@dataclass(frozen=True)
class LiveTurn:
    """One of the user's side-by-side picks, shaped as ``pairwise_table`` reads a turn."""
    user_id: str
    query_id: str
    query: str
    pair: object                    # feedback_store.trace.PairTrace
    pair_label: int                 # 1: the left reply (a) was picked, 0: the right one
    shown_epoch_ms: float
    activity: tuple | None = None   # both sides' features.interaction_features up to the pick


def live_pairwise_turns(store, rows: dict | None = None) -> list[LiveTurn]:
    """The user's own picks with both replies' reading traces: only picks made while the
    personalisation consent was on (the nightly job's rule: ``rows`` from
    ``store.training.rows``, read here when not given), none while it is off. Ties and
    picks whose replies were never shown are left out."""
    rows = store.training.rows() if rows is None else rows
    if not rows["consent_on"]:
        return []
    consented = {row["id"] for row in rows["feedback"] if row["kind"] == "pick"}
    picks = store._rows(
        "SELECT f.id, f.value, f.wall_ns, f.message_id, coalesce(p.content, '') AS query "
        "FROM feedback f JOIN messages m ON m.id = f.message_id "
        "LEFT JOIN messages p ON p.id = m.parent_id "
        "WHERE f.kind = 'pick' AND f.value IN (1, -1) ORDER BY f.wall_ns")
    turns = []
    for pick in picks:
        if pick["id"] not in consented:
            continue
        try:
            sides = store.traces.pick_sides(pick["id"])      # read once for both
            pair = store.traces.for_pick(pick["id"], sides)
            did = store.traces.activity_for_pick(pick["id"], sides)
        except KeyError:
            continue
        until = pair.pick_t_ms if math.isfinite(pair.pick_t_ms) else math.inf
        turns.append(LiveTurn(pair.a.user_id or "local", pick["id"], pick["query"], pair,
                              int(pick["value"] == 1), pick["wall_ns"] / 1e6,
                              tuple(interaction_features(side, until) for side in did)))
    return turns


def live_pointwise_table(store, rows: dict | None = None) -> Table:
    """The user's own labels for the pointwise task, shaped as the app scores: a shown
    reply against the reply shown just before it in its conversation (``scoring._example``),
    labelled when the user's explicit feedback ordered the two (a side-by-side pick, or ▲
    on one and ▼ on the other: ``pairs.explicit_preferences``): 1 when the later one was
    preferred. Regenerations are left out (an inferred label).
    Consented only (``rows`` as for :func:`live_pairwise_turns`); a reply's first showing,
    the reading the app scores (``scoring.FIRST_SHOWING``)."""
    from .pairs import explicit_preferences
    from .scoring import FIRST_SHOWING, _example, previous_shown

    rows = store.training.rows() if rows is None else rows
    if not rows["consent_on"]:
        return _table([], {}, [])
    preferred = explicit_preferences(rows)
    labelled = {message for pair in preferred for message in pair}
    found = []                   # (shown id, later message, labelled pair)
    for shown in store._rows("SELECT id, message_id, conversation_id, shown_wall_ns "
                             f"FROM shown_replies {FIRST_SHOWING} ORDER BY shown_wall_ns"):
        if shown["message_id"] not in labelled:
            continue
        previous = previous_shown(store, shown)       # as the scorer pairs it
        key = frozenset((previous["message_id"], shown["message_id"])) if previous else None
        if key in preferred:
            found.append((shown["id"], shown["message_id"], key))
    columns, per_side, meta, traces = [], {"a": [], "b": []}, [], {}
    for shown_id, later, key in found:
        example = _example(store, shown_id, traces)
        if example is None:
            continue
        shown_row, _, row, fa, fb = example
        columns.append(row)
        per_side["a"].append(fa)
        per_side["b"].append(fb)
        meta.append(("local", float(shown_row["shown_wall_ns"]) / 1e6, int(preferred[key] == later),
                     shown_row["conversation_id"]))
    order = np.argsort([m[1] for m in meta], kind="stable")   # oldest first, as training reads a user
    return _table([columns[i] for i in order],
                  {side: [per_side[side][i] for i in order] for side in per_side},
                  [meta[i] for i in order])


def live_tables(store, rows: dict | None = None) -> dict[str, Table]:
    """The user's own labelled rows for both tasks, consented only (``rows`` as for
    :func:`live_pairwise_turns`): what `align reward train` and the nightly refresh add
    to the prior. The app computes them for the nightly job while it holds the store."""
    rows = store.training.rows() if rows is None else rows
    return {"pairwise": pairwise_table(live_pairwise_turns(store, rows)),
            "pointwise": live_pointwise_table(store, rows)}


def labels_fingerprint(table: Table | None) -> str:
    """Which of the user's rows a model learned, and their labels: a pick changed, or a
    labelled conversation deleted and another label given, keep the count (and the
    nightly refresh, comparing counts, kept the model of the first word)."""
    import hashlib
    import json
    rows = [] if table is None else [
        (str(i), float(o), int(y)) for i, o, y in zip(table.ids or [""] * len(table.y), table.order, table.y)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def train_ifllm(directory, out_dir, tasks=TASKS, feature_set: str = "text_implicit") -> dict:
    from .ifllm import read_ifllm

    return train_data(read_ifllm(directory), out_dir, tasks, feature_set, source="ifllm")


def train_data(data, out_dir, tasks=TASKS, feature_set: str = "text_implicit",
               source: str = "ifllm", live: dict | None = None, consent_off: bool = False) -> dict:
    """Fit and save one model per task. ``data`` (research, may be None) gives both
    tasks; ``live`` (:func:`live_tables`: the user's own labelled rows per task) adds to
    it. A task without enough labelled rows is skipped, with the reason in its entry
    (``consent_off``: the user's labels are not read, say so); ValueError if none trained."""
    out_dir = Path(out_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    written = {}
    for task in tasks:
        tables = []
        if data is not None:
            tables.append(pairwise_table(data.pairwise_turns()) if task == "pairwise"
                          else pointwise_table(data.pointwise_pairs()))
        own = (live or {}).get(task)
        own_rows = 0 if own is None else len(own.y)
        if own_rows:
            tables.append(own)
        if not tables:
            # "No picks of yours yet" was said to a user with hundreds, the consent off.
            written[task] = {"skipped": CONSENT_OFF if consent_off else NO_DATA[task]}
            continue
        table = tables[0] if len(tables) == 1 else _concat_tables(*tables)
        try:
            model = train_table(table, task, feature_set,
                                min_rows=MIN_ROWS if data is not None else MIN_OWN_ROWS)
        except ValueError as error:
            written[task] = {"skipped": str(error)}
            continue
        sources = ([source] if data is not None else []) + (["live"] if own_rows else [])
        prior = None if data is None else str(data.directory)
        if source == "ifllm" and prior is not None:
            prior = str(Path(prior).resolve())   # the nightly refresh looks for it from anywhere
        model.info.update({"source": "+".join(sources), "version": stamp, "data": prior,
                           "live_pairs": own_rows, "live_labels": labels_fingerprint(own),
                           # which of the user's rows (pick or conversation ids, no content):
                           # deleting their conversation retires the file (scoring.retire_models)
                           "live_ids": sorted({str(i) for i in own.ids}) if own_rows else []})
        path = model.save(out_dir / f"reward-{task}-{stamp}.json")
        prune_models(out_dir, task)
        if data is not None:
            _write_prior(out_dir, source, prior)
        written[task] = {"path": str(path), "columns": len(model.names), **model.metrics,
                         "C": model.info.get("C"), "live_pairs": model.info["live_pairs"]}
    if all("skipped" in info for info in written.values()):
        raise ValueError("; ".join(f"{task}: {info['skipped']}" for task, info in written.items()))
    return written


PRIOR_FILE = "reward-prior.json"


def _write_prior(out_dir: Path, source: str, data: str | None) -> None:
    """Which prior the models were trained with, kept beside them: a conversation deleted
    retires every model that learned from its labels, and the nightly refresh, which read
    the prior from the newest model, then trained without it for good."""
    temporary = out_dir / (PRIOR_FILE + ".tmp")
    temporary.write_text(json.dumps({"source": source, "data": data}))
    os.replace(temporary, out_dir / PRIOR_FILE)


def _recorded_prior(directory: Path) -> dict:
    try:
        prior = json.loads((Path(directory) / PRIOR_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return prior if isinstance(prior, dict) else {}


def refresh(data_dir, labels: dict | None = None) -> dict:
    """What the nightly job does for the reward models: retrain them when the user has
    given explicit labels since the newest model files were trained, with the prior those
    files were trained with (the imported research, or the same IFLLM folder while it is
    still there); a user without a prior gets models of their own once there are enough
    labels. ``labels`` (:func:`live_tables`) come from the app when it holds the store;
    otherwise they are read from the store here. Returns ``status`` (``trained``,
    ``up_to_date`` or ``skipped``), the ``reason`` and, when trained, what ``train_data``
    wrote."""
    from feedback_store import FeedbackStore
    from .scoring import model_dir, newest_model

    directory = model_dir(data_dir)
    newest = {task: newest_model(directory, task) for task in TASKS}
    sources = " ".join(str(m.info.get("source", "")) for m in newest.values() if m is not None)
    folders = {m.info.get("data") for m in newest.values()
               if m is not None and "ifllm" in str(m.info.get("source", ""))} - {None}
    if "ifllm" not in sources and "research" not in sources:    # (models retired, or none)
        prior = _recorded_prior(directory)
        sources += " " + str(prior.get("source") or "")
        if prior.get("source") == "ifllm" and prior.get("data"):
            folders = {prior["data"]}
    app_open = labels is not None
    store = None if app_open else FeedbackStore.open(data_dir)
    research = None
    try:
        labels = labels if app_open else live_tables(store)
        counts = {task: len(labels[task].y) for task in TASKS}
        def learnt(task):       # (files from before the fingerprint: by the count)
            info = newest[task].info
            return info["live_labels"] == labels_fingerprint(labels[task]) if "live_labels" in info \
                else info.get("live_pairs", 0) == counts[task]
        stale = [task for task in TASKS if counts[task] and (newest[task] is None or not learnt(task))]
        if not stale and any(counts.values()):
            return {"status": "up_to_date", "labels": counts,
                    "reason": "no new picks or thumbs since the reward models were trained"}
        if not stale:
            return {"status": "skipped", "labels": counts,
                    "reason": "no pick or thumbs of yours orders two replies you read yet"}
        if "research" in sources:
            if app_open:
                return {"status": "skipped", "labels": counts,
                        "reason": "the models' prior, the imported study, is in the database "
                                  "Glance holds while it is open: they are refreshed on a night "
                                  "it is closed (or with align reward train --research)"}
            from .research import ResearchSchemaMissing, read_research
            try:
                research = read_research(store)
            except ResearchSchemaMissing:
                research = None
            if research is None or not research.turns:
                return {"status": "skipped", "labels": counts,
                        "reason": "the imported study the models were trained with was removed; "
                                  "run align reward train"}
    finally:
        if store is not None:
            store.close()
    source, data = "research", research
    if research is None:
        source, folder = "ifllm", max(folders, default=None)
        if folder is not None and not Path(folder).is_dir():
            return {"status": "skipped", "labels": counts,
                    "reason": f"the study folder the models were trained with is gone ({folder}); "
                              "run align reward train --ifllm DIR"}
        if folder is not None:
            from .ifllm import read_ifllm
            data = read_ifllm(folder)
    try:
        written = train_data(data, directory, tuple(stale), source=source, live=labels)
    except ValueError as error:           # too few labels of the user's own, no prior
        return {"status": "skipped", "reason": str(error), "labels": counts}
    return {"status": "trained", "labels": counts, "written": written}

