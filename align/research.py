"""Imported research data in the encrypted store: `align import-ifllm DIR`.

An IFLLM-format folder, read by :mod:`align.ifllm` (clock skew repaired, duplicates
dropped, offsets checked, lines wrapped, words from the shared tokenizer), is written
into the ``research_*`` tables of migration 0003:

    worker → user_id          task → research_conversations
    query → research_turns    answers → research_shown_replies (pairwise: sides 1 and 2)
    samples → research_samples (box samples with offset/word/line; page samples)
    ratings → research_feedback (preference, better_than_previous, likert)

Its own scope (tables.py ``research``): retention never expires it, deleting a
conversation never touches it, export leaves it out, and training uses it only when
asked (``align reward train --research``). Writing is one bulk transaction through the
store's writer thread (typed numpy columns registered as DuckDB views; the live sample
queue is not involved). Importing the same folder again replaces its rows: idempotent.
"""
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from feedback_store import tables
from feedback_store.connection import transaction
from feedback_store.trace import ReadingTrace

from .ifllm import IfllmData, Turn, check_folder, present_files, read_ifllm, turn_key

RESEARCH_TABLES = [t.name for t in tables.in_scope("research")]
_INT_NULL = np.iinfo(np.int64).min


class ResearchSchemaMissing(RuntimeError):
    pass


def folder_fingerprint(directory) -> str:
    """Identity of a folder's content (not its path): the same data imported from two
    places is one import."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in present_files(directory):
        path = directory / name
        digest.update(f"{name}:{path.stat().st_size}".encode())
        if name != "samples.parquet":  # the small files in full; samples by size
            digest.update(path.read_bytes())
    return "ifllm-" + digest.hexdigest()[:20]


def _check_schema(store) -> None:
    present = {r["table_name"] for r in store._rows(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'research_%'")}
    missing = set(RESEARCH_TABLES) - present
    if missing:
        raise ResearchSchemaMissing(
            "This database has no research tables (migration 0003): it was created by a "
            "Glance that did not have them. Missing: " + ", ".join(sorted(missing)))


# --- building the columns --------------------------------------------------------------
def _text(values) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def _columns(data: IfllmData, import_id: str) -> dict[str, dict[str, np.ndarray]]:
    conversations, turns, replies, feedback = {}, [], [], []
    sample_parts = []
    for turn in data.turns:
        conversation_id = f"ifllm:{turn.user_id}/{turn.task_id}"
        conversations[conversation_id] = (turn.user_id, turn.task_id, turn.clock_shift_h)
        turn_id = turn_key(turn.user_id, turn.task_id, turn.query_id)
        turns.append((turn_id, conversation_id, turn.user_id, turn.query_id, turn.index, turn.query,
                      turn.pairwise, turn.shown_epoch_ms, turn.end_epoch_ms, turn.adjustment))
        for side, trace in enumerate(turn.traces, start=1):
            reply_index = len(replies)
            replies.append((trace.shown_reply_id, turn_id, conversation_id, turn.user_id, side,
                            turn.models[side - 1] if len(turn.models) >= side else None, trace.text,
                            trace.line_starts.tolist(), "line" in trace.estimated))
            sample_parts.append((reply_index, trace))
            if not np.isnan(turn.likert[side - 1]):
                feedback.append((turn_id, conversation_id, turn.user_id, "likert", side,
                                 turn.likert[side - 1]))
        page_index = len(replies)
        replies.append((turn.page.shown_reply_id, turn_id, conversation_id, turn.user_id, 0, None,
                        "", [0], False))
        sample_parts.append((page_index, turn.page))
        if turn.pair_label is not None:
            feedback.append((turn_id, conversation_id, turn.user_id, "preference", None, turn.preference))
        if turn.better_than_previous is not None:
            feedback.append((turn_id, conversation_id, turn.user_id, "better_than_previous", None,
                             float(turn.better_than_previous)))
    lengths = [len(trace) for _, trace in sample_parts]
    samples = {
        "reply_index": np.repeat(np.array([i for i, _ in sample_parts], np.int64), lengths),
        "seq": np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) if lengths else np.zeros(0, np.int64),
        **{name: np.concatenate([getattr(tr, name) for _, tr in sample_parts]).astype(dtype)
           for name, dtype in (("t_ms", np.float64), ("x", np.float64), ("y", np.float64),
                               ("offset", np.int64), ("word", np.int64), ("line", np.int64),
                               ("source", np.int64), ("confidence", np.float64))},
    }
    return {
        "conversations": {"id": _text(conversations), "user_id": _text(v[0] for v in conversations.values()),
                          "task_id": np.array([v[1] for v in conversations.values()], np.int64),
                          "clock_shift_h": np.array([v[2] for v in conversations.values()], np.int64)},
        "turns": {name: (_text(col) if kind == "s" else np.array(col, dtype=kind))
                  for (name, kind), col in zip(
                      (("id", "s"), ("conversation_id", "s"), ("user_id", "s"), ("query_id", np.int64),
                       ("turn_index", np.int64), ("query", "s"), ("pairwise", bool),
                       ("shown_epoch_ms", np.float64), ("end_epoch_ms", np.float64),
                       ("adjustment", np.int64)),
                      zip(*turns) if turns else [[]] * 10)},
        "replies": {"reply_index": np.arange(len(replies), dtype=np.int64),
                    "id": _text(r[0] for r in replies), "turn_id": _text(r[1] for r in replies),
                    "conversation_id": _text(r[2] for r in replies), "user_id": _text(r[3] for r in replies),
                    "side": np.array([r[4] for r in replies], np.int64),
                    "model": _text(r[5] for r in replies), "rendered_text": _text(r[6] for r in replies),
                    "line_starts": _text(json.dumps(r[7]) for r in replies),
                    "lines_estimated": np.array([r[8] for r in replies], bool)},
        "feedback": {"turn_id": _text(f[0] for f in feedback), "conversation_id": _text(f[1] for f in feedback),
                     "user_id": _text(f[2] for f in feedback), "kind": _text(f[3] for f in feedback),
                     "side": np.array([_INT_NULL if f[4] is None else f[4] for f in feedback], np.int64),
                     "value": np.array([f[5] for f in feedback], np.float64)},
        "samples": samples,
    }


def _insert(con, view: str, columns: dict, sql: str) -> int:
    con.register(view, columns)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.unregister(view)


# --- import / remove -----------------------------------------------------------------------
def import_ifllm(store, directory, progress=None) -> dict:
    """Import (or re-import) an IFLLM folder into the store's research tables."""
    directory = Path(directory)
    check_folder(directory)
    _check_schema(store)
    started = time.monotonic()
    import_id = folder_fingerprint(directory)
    data = read_ifllm(directory)
    if progress:
        progress(f"read {len(data.turns)} turns in {time.monotonic() - started:.1f} s; writing")
    cols = _columns(data, import_id)
    report = {"import_id": import_id, "directory": str(directory.resolve()), **data.report}

    def write(con):
        with transaction(con):
            replaced = con.execute("SELECT count(*) FROM research_imports WHERE id = ?",
                                   [import_id]).fetchone()[0]
            for table in RESEARCH_TABLES:
                column = "id" if table == "research_imports" else "import_id"
                con.execute(f"DELETE FROM {table} WHERE {column} = ?", [import_id])
            superseded = _supersede(con, cols["conversations"]["id"])
            written = {}
            written["research_conversations"] = _insert(con, "research_batch", cols["conversations"], f"""
                INSERT INTO research_conversations SELECT '{import_id}', id, user_id, task_id,
                clock_shift_h FROM research_batch""")
            written["research_turns"] = _insert(con, "research_batch", cols["turns"], f"""
                INSERT INTO research_turns SELECT '{import_id}', id, conversation_id, user_id, query_id,
                turn_index, query, pairwise, shown_epoch_ms, end_epoch_ms, adjustment FROM research_batch""")
            written["research_shown_replies"] = _insert(con, "research_batch", cols["replies"], f"""
                INSERT INTO research_shown_replies SELECT '{import_id}', id, turn_id, conversation_id,
                user_id, side, nullif(model, ''), rendered_text, line_starts::INTEGER[], lines_estimated
                FROM research_batch""")
            written["research_feedback"] = _insert(con, "research_batch", cols["feedback"], f"""
                INSERT INTO research_feedback SELECT '{import_id}', turn_id, conversation_id, user_id,
                kind, nullif(side, {_INT_NULL}), value FROM research_batch""")
            con.register("research_reply_ids", {"reply_index": cols["replies"]["reply_index"],
                                                 "id": cols["replies"]["id"]})
            try:
                written["research_samples"] = _insert(con, "research_batch", cols["samples"], """
                    INSERT INTO research_samples SELECT '""" + import_id + """', r.id, s.seq, s.t_ms,
                    if(isnan(s.x), NULL, s.x), if(isnan(s.y), NULL, s.y),
                    nullif(s."offset", -1), nullif(s.word, -1), nullif(s.line, -1),
                    s.source, if(isnan(s.confidence), NULL, s.confidence)
                    FROM research_batch s JOIN research_reply_ids r USING (reply_index)""")
            finally:
                con.unregister("research_reply_ids")
            con.execute("INSERT INTO research_imports VALUES (?, 'ifllm', ?, ?, ?)",
                        [import_id, str(directory.resolve()), time.time_ns(), json.dumps(report)])
            return replaced, written, superseded

    replaced, written, superseded = store.writer.call(write)
    report.update({"replaced_previous_import": bool(replaced), "written": written,
                   "superseded": superseded,
                   "seconds": round(time.monotonic() - started, 1)})
    return report


def _supersede(con, conversation_ids) -> dict[str, int]:
    """Rows of earlier imports for the conversations being imported now: row ids are the
    study's own (worker, task, query), so a folder that overlaps an earlier one (a subset
    of the same study, or a corrected copy) doubled every shared trace. The newest import
    holds them; an earlier import left with nothing is removed."""
    con.register("research_incoming", {"id": np.asarray(conversation_ids, dtype=object)})
    try:
        gone = {"research_samples": con.execute(
            "DELETE FROM research_samples WHERE EXISTS (SELECT 1 FROM research_shown_replies r "
            "WHERE r.import_id = research_samples.import_id AND r.id = research_samples.shown_reply_id "
            "AND r.conversation_id IN (SELECT id FROM research_incoming))").fetchone()[0]}
        for table in ("research_shown_replies", "research_feedback", "research_turns"):
            gone[table] = con.execute(f"DELETE FROM {table} WHERE conversation_id IN "
                                      "(SELECT id FROM research_incoming)").fetchone()[0]
        gone["research_conversations"] = con.execute(
            "DELETE FROM research_conversations WHERE id IN (SELECT id FROM research_incoming)"
        ).fetchone()[0]
    finally:
        con.unregister("research_incoming")
    gone["research_imports"] = con.execute(
        "DELETE FROM research_imports WHERE id NOT IN (SELECT import_id FROM research_conversations)"
    ).fetchone()[0]
    return {table: n for table, n in gone.items() if n}


def remove_research(store, directory=None, compact: bool = True) -> dict:
    """Delete imported research data (every import, or only ``directory``'s: the import
    of its content, or the one made from that path, if the folder changed or is gone),
    then rewrite the file so the space is given back."""
    _check_schema(store)
    ids = None
    if directory:
        made_there = {row["id"] for row in store._rows(
            "SELECT id FROM research_imports WHERE directory = ?", (str(Path(directory).resolve()),))}
        held = {row["id"] for row in store._rows("SELECT id FROM research_imports")}
        content = folder_fingerprint(directory) if Path(directory).is_dir() else None
        # What the folder holds now, when that was imported; the imports made from its path
        # only when it was not (the folder changed or is gone): a folder refilled with other
        # data and imported again named both, and removing it removed the first as well.
        ids = {content} if content in held else made_there

    def delete(con):
        with transaction(con):
            removed = {}
            for table in RESEARCH_TABLES:
                column = "id" if table == "research_imports" else "import_id"
                where, params = (f" WHERE list_contains(?, {column})", [sorted(ids)]) \
                    if ids is not None else ("", [])
                removed[table] = con.execute(f"DELETE FROM {table}{where}", params).fetchone()[0]
            return removed

    removed = store.writer.call(delete)
    if compact and any(removed.values()):
        store.compact()
    return {"removed": removed, "import_id": ",".join(sorted(ids)) if ids else None}


def imports(store) -> list[dict]:
    _check_schema(store)
    return store._rows("SELECT id, source, directory, imported_wall_ns FROM research_imports ORDER BY 4")


# --- reading it back -------------------------------------------------------------------------
def read_research(store, import_id: str | None = None) -> IfllmData:
    """Imported turns with their traces, as :func:`align.ifllm.read_ifllm` gives them
    (for ``align reward train --research``)."""
    _check_schema(store)
    where, params = ("WHERE import_id = ?", [import_id]) if import_id else ("", [])
    turns = store._rows(f"SELECT * FROM research_turns {where} ORDER BY user_id, conversation_id, turn_index",
                        params)
    replies = {r["id"]: r for r in store._rows(f"SELECT * FROM research_shown_replies {where}", params)}
    shifts = {r["id"]: r["clock_shift_h"] for r in store._rows(
        f"SELECT id, clock_shift_h FROM research_conversations {where}", params)}
    ratings: dict[str, dict] = {}
    for r in store._rows(f"SELECT * FROM research_feedback {where}", params):
        ratings.setdefault(r["turn_id"], {})[(r["kind"], r["side"])] = r["value"]
    with store.reading():
        samples = store._cursor().execute(f"""
            SELECT shown_reply_id, t_ms, coalesce(x, 'NaN'::DOUBLE) AS x, coalesce(y, 'NaN'::DOUBLE) AS y,
                   coalesce(text_offset, -1) AS text_offset, source,
                   coalesce(confidence, 'NaN'::DOUBLE) AS confidence
            FROM research_samples {where} ORDER BY shown_reply_id, seq""", params).fetchnumpy()
    ids = np.asarray(samples["shown_reply_id"], dtype=object)
    bounds = {}
    if len(ids):
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(ids)]])
        bounds = {ids[s]: (s, e) for s, e in zip(starts, ends)}

    def trace(reply_id: str, text: str, line_starts, user: str, duration: float, estimated: bool,
              page: bool = False) -> ReadingTrace:
        s, e = bounds.get(reply_id, (0, 0))
        return ReadingTrace.build(
            t_ms=samples["t_ms"][s:e], offset=samples["text_offset"][s:e], text=text,
            line_starts=np.asarray(line_starts or [0], np.int32), x=samples["x"][s:e], y=samples["y"][s:e],
            source=samples["source"][s:e], confidence=None if page else samples["confidence"][s:e],
            origin="imported", user_id=user, shown_reply_id=reply_id, shown_for_ms=duration,
            missing=("visible",), estimated=("line",) if estimated else ())

    out = []
    for t in turns:
        duration = t["end_epoch_ms"] - t["shown_epoch_ms"]
        sides = [replies[f"{t['id']}:{side}"] for side in ((1, 2) if t["pairwise"] else (1,))]
        traces = tuple(trace(r["id"], r["rendered_text"] or "", r["line_starts"], t["user_id"], duration,
                             r["lines_estimated"]) for r in sides)
        page = trace(f"{t['id']}:page", "", [0], t["user_id"], duration, False, page=True)
        rated = ratings.get(t["id"], {})
        preference = rated.get(("preference", None), rated.get(("better_than_previous", None), float("nan")))
        out.append(Turn(
            user_id=t["user_id"], task_id=int(t["conversation_id"].rsplit("/", 1)[1]), index=t["turn_index"],
            query_id=t["query_id"], query=t["query"] or "",
            responses=tuple(r["rendered_text"] or "" for r in sides),
            shown_epoch_ms=t["shown_epoch_ms"], end_epoch_ms=t["end_epoch_ms"],
            clock_shift_h=int(shifts.get(t["conversation_id"]) or 0), preference=float(preference),
            likert=tuple(float(rated.get(("likert", side), float("nan"))) for side in range(1, len(sides) + 1)),
            adjustment=int(t["adjustment"] or 0), traces=traces, page=page,
            models=tuple(r["model"] for r in sides)))
    return IfllmData(directory=f"store:{import_id or 'all'}", turns=out)
