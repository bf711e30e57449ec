"""Read a folder in the IFLLM compact-Parquet format into turns with reading traces.

Format: ``queries.parquet`` and ``samples.parquet`` are read; ``tasks.parquet`` and
``workers.parquet`` may be there too (see ``../shared/ifllm/README.md``). Any folder in
that format works (``--holdout``): the files and columns read are checked before reading,
and a folder that lacks one gets a message naming it (``IfllmFormatError``).
DuckDB reads the Parquet files directly (in memory, extensions never fetched); pandas is
not used.

What :func:`read_ifllm` does, in order:
1. **Turns.** Per task (``user_id``, ``task_id``), queries in ``query_ID`` order (their
   timestamps never decrease in that order). Answer *k* is on screen from query *k*'s
   timestamp to query *k+1*'s; the last one until the task's last sample. A query without
   a parseable timestamp (``0000-00-00 00:00:00``) is repaired: the first of a task starts
   at the task's first sample, a later one halfway between its neighbours.
2. **Clock skew.** ``query_timestamp`` is sometimes a whole number of hours off the
   samples' ``epoch_ms``. Per task we try every shift of -12…+12 h and keep the one under
   which the most on-text samples (those with a ``window``) land in an answer — on their
   side — that contains their ``window`` string; ties go to the smallest shift. No label
   is used.
3. **Duplicates.** In pairwise tasks ``abs_gaze`` batches were written twice: we keep one
   row per (``epoch_ms``, ``x``, ``y``).
4. **Samples → answers.** Each sample goes to the answer on screen at its time (after the
   shift); ``rel_mouse``/``rel_gaze`` to the single answer, ``rel_gaze_one`` /
   ``rel_mouse_left`` to response 1 (left box), ``rel_gaze_two`` / ``rel_mouse_right`` to
   response 2 (right box). ``centre_idx`` indexes the raw answer text (the windows contain
   the markdown markers, so the site showed the text unrendered); an on-text sample is
   kept on its offset only if its ``window`` is found around that offset. If not, the
   offset is moved to the window's only occurrence in the answer, or cleared (the sample
   stays, "over the box, not over this text" — e.g. the "please wait" placeholder shown
   while a pairwise answer was generated).
5. **Lines.** The study did not log line boxes. We estimate each box's characters per
   line from its geometry (pixels per character from pairs of on-text points on one
   line, times the horizontal extent of the on-text points), falling back to the
   worker's median and then to :data:`DEFAULT_CHARS_PER_LINE`, and wrap the text with
   :func:`feedback_store.words.wrap_line_starts`; ``line`` is marked *estimated*.
6. **Traces.** One :class:`ReadingTrace` per shown answer holding its mouse (source 0) and
   gaze (source 1) samples (``t_ms`` from the answer's start; x/y box-relative, NaN when
   off the box; ``confidence`` = WebGazer's ``validate`` flag for gaze), a page trace of
   the ``abs_*`` samples (page coordinates, no text), and for pairwise turns a
   :class:`PairTrace` whose ``pick_t_ms`` is the end of the turn's window. That pick time
   is **approximate**: the rating is posted when the next query is sent, so the window's
   end includes rating and typing the next query.

Counts of what was read, repaired and dropped (by reason) are in ``IfllmData.report``.
Parsing the 7.4 M samples takes about a minute on 2 cores; the result is cached (see
:func:`cache_dir`), keyed by the files' sizes and modification times.
"""
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from feedback_store.trace import GAZE, MOUSE, PairTrace, ReadingTrace
from feedback_store.words import wrap_line_starts

# The files and columns the reader uses; the release's other columns are ignored.
COLUMNS = {
    "queries.parquet": ("user_id", "task_id", "query_ID", "user_query", "llm_response_1",
                        "llm_response_2", "likert_1", "likert_2", "preference", "adjustment",
                        "query_timestamp", "llm_name_1", "llm_name_2"),
    "samples.parquet": ("worker", "task_id", "kind", "row", "x", "y", "window", "centre_idx",
                        "validate", "epoch_ms"),
}
OPTIONAL_FILES = ("tasks.parquet", "workers.parquet")   # copied by write_subset, never read
FILES = (*COLUMNS, *OPTIONAL_FILES)
CACHE_VERSION = 7
HOUR_MS = 3_600_000
SHIFTS_H = tuple(range(-12, 13))
# Median of the per-box estimates on the shared development folder is ~120; a round
# 100 is the documented fallback when neither the box nor the worker has enough points.
DEFAULT_CHARS_PER_LINE = 100
_MIN_POINTS_FOR_WRAP = 30

# kind -> (code, side, source); side -1 = page coordinates (abs_*)
KINDS = {
    "abs_mouse": (0, -1, MOUSE), "abs_gaze": (1, -1, GAZE),
    "rel_mouse": (2, 0, MOUSE), "rel_gaze": (3, 0, GAZE),
    "rel_mouse_left": (4, 0, MOUSE), "rel_gaze_one": (5, 0, GAZE),
    "rel_mouse_right": (6, 1, MOUSE), "rel_gaze_two": (7, 1, GAZE),
}
_SIDE = np.array([v[1] for v in sorted(KINDS.values())], dtype=np.int8)
_SOURCE = np.array([v[2] for v in sorted(KINDS.values())], dtype=np.uint8)


class IfllmFormatError(ValueError):
    pass


@dataclass(eq=False)
class Turn:
    """One query of a task and the answer(s) shown for it, with how they were read."""
    user_id: str
    task_id: int
    index: int                      # position in its task (0 = first query)
    query_id: int
    query: str
    responses: tuple[str, ...]      # (response 1,) or (response 1, response 2)
    shown_epoch_ms: float           # on the samples' clock (skew fixed)
    end_epoch_ms: float
    clock_shift_h: int
    preference: float               # NaN = not given; pairwise 1/2, pointwise 1/0
    likert: tuple[float, ...]
    adjustment: int
    traces: tuple[ReadingTrace, ...]  # one per response
    page: ReadingTrace               # abs_* samples in page coordinates (no text)
    models: tuple = ()               # the study's LLM name per response

    @property
    def task(self) -> str:
        return f"{self.user_id}/{self.task_id}"

    @property
    def pairwise(self) -> bool:
        return len(self.responses) == 2

    @property
    def duration_ms(self) -> float:
        return self.end_epoch_ms - self.shown_epoch_ms

    @property
    def pair(self) -> PairTrace | None:
        if not self.pairwise:
            return None
        return PairTrace(self.traces[0], self.traces[1], pick_t_ms=self.duration_ms)

    @property
    def pair_label(self) -> int | None:
        """1 when response 1 (a, left) was preferred, 0 when response 2; None if not given."""
        if not self.pairwise or self.preference not in (1.0, 2.0):
            return None
        return int(self.preference == 1.0)

    @property
    def better_than_previous(self) -> int | None:
        """Pointwise turns from the second on: 1 = "current answer is better"."""
        if self.pairwise or self.index == 0 or self.preference not in (0.0, 1.0):
            return None
        return int(self.preference)


@dataclass(eq=False)
class IfllmData:
    directory: str
    turns: list[Turn]
    report: dict = field(default_factory=dict)

    def pairwise_turns(self, labelled: bool = True) -> list[Turn]:
        return [t for t in self.turns if t.pairwise and (t.pair_label is not None or not labelled)]

    def pointwise_pairs(self) -> list[tuple[Turn, Turn]]:
        """(previous, current) pointwise turns of one task where current is labelled."""
        by_task = {}
        for turn in self.turns:
            by_task.setdefault((turn.user_id, turn.task_id), {})[turn.index] = turn
        out = []
        for turn in self.turns:
            if turn.better_than_previous is not None:
                previous = by_task[(turn.user_id, turn.task_id)].get(turn.index - 1)
                if previous is not None and not previous.pairwise:
                    out.append((previous, turn))
        return out

    def workers(self) -> list[str]:
        return sorted({t.user_id for t in self.turns})


# --- public entry points -------------------------------------------------------------
def cache_dir() -> Path:
    """``$GLANCE_CACHE_DIR`` or the platform's user cache folder (never inside the repo)."""
    override = os.environ.get("GLANCE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("Glance", appauthor=False))


def read_ifllm(directory, use_cache: bool = True) -> IfllmData:
    directory = Path(directory)
    check_folder(directory)
    cache_file = cache_dir() / "ifllm" / f"{_fingerprint(directory)}.npz"
    if use_cache and cache_file.exists():
        try:
            return _load_cache(cache_file, directory)
        except Exception:  # noqa: BLE001 - a stale or partial cache is rebuilt
            pass
    try:
        data = _read(directory)
    except duckdb.Error as error:
        # The right columns with other types (x as text...): a DuckDB traceback before.
        raise IfllmFormatError(f"{directory} cannot be read as IFLLM data "
                               f"({str(error).splitlines()[0]})") from None
    if use_cache:
        try:
            _save_cache(cache_file, data)
        except OSError:
            pass  # caching is an optimisation only
    return data


def check_folder(directory: Path) -> None:
    """Refuse, with the reason, a folder whose files or columns the reader needs are not
    there (reads only the Parquet footers)."""
    directory = Path(directory)
    if not directory.exists():
        raise IfllmFormatError(f"{directory} does not exist")
    if not directory.is_dir():
        raise IfllmFormatError(f"{directory} is a file, not a folder of the study's Parquet files")
    missing = [name for name in COLUMNS if not (directory / name).is_file()]
    if missing:
        raise IfllmFormatError(f"{directory} is not an IFLLM folder: missing {', '.join(missing)}")
    con = connect()
    try:
        for name, wanted in COLUMNS.items():
            try:
                have = {row[0].lower() for row in con.execute(
                    f"describe select * from {_sql_path(directory / name)}").fetchall()}
            except duckdb.Error as error:
                raise IfllmFormatError(f"{directory / name} is not a readable Parquet file "
                                       f"({str(error).splitlines()[0]})") from None
            lacking = [column for column in wanted if column.lower() not in have]
            if lacking:
                raise IfllmFormatError(f"{directory / name} lacks the column"
                                       f"{'s' if len(lacking) > 1 else ''} {', '.join(lacking)}")
    finally:
        con.close()


def present_files(directory: Path) -> list[str]:
    return [name for name in FILES if (Path(directory) / name).is_file()]


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # Never reach for the extension server (DNS look-ups pytest-socket cannot see).
    con.execute("SET autoinstall_known_extensions=false; SET autoload_known_extensions=false;"
                "SET enable_progress_bar=false")
    return con


# --- reading -------------------------------------------------------------------------
def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


# The columns read as numbers, with their type in the study's release. A folder "in the
# same format" written by another tool may hold one as text: a cell that is not a number
# is then cleared (counted), instead of one "n/a" stopping the whole import.
_NUMBERS = {
    "queries.parquet": {"task_id": "BIGINT", "query_ID": "BIGINT", "likert_1": "DOUBLE",
                        "likert_2": "DOUBLE", "preference": "DOUBLE", "adjustment": "BIGINT"},
    "samples.parquet": {"task_id": "BIGINT", "row": "BIGINT", "x": "DOUBLE", "y": "DOUBLE",
                        "centre_idx": "BIGINT", "validate": "BIGINT", "epoch_ms": "BIGINT"},
}
# Read as text whatever type another folder stored them as (answers stored as numbers
# ended the import in a traceback).
_TEXTS = {"queries.parquet": ("user_id", "user_query", "llm_response_1", "llm_response_2"),
          "samples.parquet": ("worker",)}
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE")


def _typed_view(con, view: str, directory: Path, name: str, report) -> None:
    """``view``: the file with its number columns as numbers (cells that are not numbers
    cleared and counted under ``repaired``) and its id columns as text."""
    source = _sql_path(directory / name)
    declared = {row[0].lower(): row[1] for row in con.execute(f"describe select * from {source}").fetchall()}
    as_text = {column: kind for column, kind in _NUMBERS[name].items()
               if declared[column.lower()].split("(")[0] not in _NUMERIC}
    replace = [f'try_cast("{column}" as {kind}) as "{column}"' for column, kind in as_text.items()]
    replace += [f'"{column}"::varchar as "{column}"' for column in _TEXTS[name]
                if declared[column.lower()] != "VARCHAR"]
    if as_text:
        counts = con.execute("select " + ", ".join(
            f'count("{column}"), count("{column}") - count(try_cast("{column}" as {kind}))'
            for column, kind in as_text.items()) + f" from {source}").fetchone()
        for i, column in enumerate(as_text):
            present, cleared = counts[2 * i], counts[2 * i + 1]
            if present and cleared == present:     # a column of other things, not a stray cell
                raise duckdb.ConversionException(
                    f"{name}'s column {column} holds no numbers (it is {declared[column.lower()]})")
            report["repaired"][f"{name.split('.')[0]}_{column}_not_a_number_cleared"] += cleared
    if name == "queries.parquet":
        replace.append(f'{_epoch_ms("query_timestamp", declared["query_timestamp"])} as query_timestamp')
    star = f"* replace ({', '.join(replace)})" if replace else "*"
    con.execute(f"create temp view {view} as select {star} from {source}")


def _epoch_ms(column: str, declared: str) -> str:
    """SQL for ``column`` as milliseconds since the epoch, whatever type the folder stored
    it as. Only the study's own text form was read before ('%Y-%m-%d %H:%M:%S'): an ISO
    text ('…T…', fractions, an offset) or a TIMESTAMPTZ column dropped every task, and the
    reader then failed with a meaningless numpy message. Text with a UTC offset (or Z) is
    that instant; text without one is the wall clock it says, as the study's own (the
    whole-hour shift per task is found from the samples); numbers are seconds or
    milliseconds since 1970."""
    kind = declared.split("(")[0].upper()
    quoted = f'"{column}"'
    if kind == "TIMESTAMP WITH TIME ZONE":
        return f"epoch_ms({quoted})"
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"epoch_ms({quoted}::timestamp)"
    if kind in _NUMERIC or kind == "DECIMAL":
        # below 1e11: seconds (1e11 s is the year 5138; 1e11 ms is March 1973)
        return (f"case when abs({quoted}) < 1e11 then round({quoted} * 1000) "
                f"else round({quoted}) end::bigint")
    text = f"{quoted}::varchar"
    # (an offset read as wall clock put a +05:30 folder's turns at the wrong times: a
    # half-hour is no whole-hour shift, and a task without on-text samples keeps none)
    offset = r"'\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$'"
    return (f"case when regexp_matches({text}, {offset}) "
            f"then epoch_ms(try_cast({text} as timestamptz)) "
            f"else epoch_ms(try_cast({text} as timestamp)) end")


def _read(directory: Path) -> IfllmData:
    con = connect()
    report = {"read": Counter(), "repaired": Counter(), "dropped": Counter()}
    _typed_view(con, "queries", directory, "queries.parquet", report)
    _typed_view(con, "samples", directory, "samples.parquet", report)

    rows = con.execute("""
        select user_id, task_id, query_ID, coalesce(user_query, ''), coalesce(llm_response_1, ''),
               llm_response_2, likert_1, likert_2, preference, coalesce(adjustment, 0),
               query_timestamp, llm_name_1, llm_name_2
        from queries order by user_id, task_id, query_ID""").fetchall()
    report["read"]["queries"] = len(rows)
    tasks: dict[tuple, list] = {}
    for row in rows:
        if row[0] is None or row[1] is None:
            report["dropped"]["queries_without_worker_or_task"] += 1
            continue
        if row[2] is None:              # (a traceback before: int(None) when it was used)
            report["dropped"]["queries_without_query_id"] += 1
            continue
        tasks.setdefault((row[0], int(row[1])), []).append(row)
    task_keys = sorted(tasks)
    if not task_keys:
        raise IfllmFormatError(f"{directory} holds no study turns: queries.parquet has no row "
                               "with a worker and a task.")
    report["read"]["tasks_with_queries"] = len(task_keys)
    report["read"]["workers"] = len({k[0] for k in task_keys})

    # Task index in SQL so samples travel as numbers, not 7 M worker strings.
    con.execute("create temp table task_index (worker varchar, task_id integer, ti integer, pairwise boolean)")
    con.executemany("insert into task_index values (?, ?, ?, ?)",
                    [(k[0], k[1], i, any(r[5] is not None for r in tasks[k]))
                     for i, k in enumerate(task_keys)])
    kind_case = " ".join(f"when '{name}' then {code}" for name, (code, _, _) in KINDS.items())
    names = ", ".join(f"'{k}'" for k in KINDS)
    known_kind = f"s.kind in ({names})"
    # Each sample dropped counts under one reason, the first that applies (counted apart,
    # a sample of an unknown kind and without a time was dropped twice, and the duplicates,
    # found by subtraction, came out negative).
    (report["read"]["samples"], report["dropped"]["samples_task_without_queries"],
     report["dropped"]["samples_unknown_kind"],
     report["dropped"]["samples_without_time"]) = con.execute(f"""
        select count(*), count(*) filter (where t.ti is null),
               count(*) filter (where t.ti is not null and not coalesce({known_kind}, false)),
               count(*) filter (where t.ti is not null and {known_kind} and s.epoch_ms is null)
        from samples s left join task_index t
        on s.worker = t.worker and s.task_id = t.task_id""").fetchone()
    # One row per sample kept; pairwise abs_gaze batches (written twice) de-duplicated.
    select = f"""select t.ti, case s.kind {kind_case} end as kind_code, s.row, s.epoch_ms, s.x, s.y,
               s.centre_idx, s.validate, s."window"
        from samples s join task_index t on s.worker = t.worker and s.task_id = t.task_id
        where {known_kind} and s.epoch_ms is not null"""
    con.execute(f"""
        create temp table kept as
        {select} and not (t.pairwise and s.kind = 'abs_gaze')
        union all
        select * from ({select} and t.pairwise and s.kind = 'abs_gaze')
        qualify row_number() over (partition by ti, epoch_ms, x, y order by row) = 1""")
    columns = con.execute("""
        select ti, kind_code::tinyint as kind, epoch_ms, coalesce(x, 'nan'::double) as x,
               coalesce(y, 'nan'::double) as y, coalesce(centre_idx, -1) as centre,
               coalesce(validate, -1)::tinyint as validate
        from kept order by ti, epoch_ms, kind_code, row""").fetchnumpy()
    # The same rows as ``on_text`` below (a negative centre_idx is on no text): one window
    # each, in the same order.
    windows = con.execute("""
        select coalesce("window", '') from kept where coalesce(centre_idx, -1) >= 0
        order by ti, epoch_ms, kind_code, row""").fetchnumpy()
    windows = next(iter(windows.values()))
    total_kept = len(columns["ti"])
    report["dropped"]["abs_gaze_duplicate_rows"] = int(
        report["read"]["samples"] - report["dropped"]["samples_task_without_queries"]
        - report["dropped"]["samples_unknown_kind"] - report["dropped"]["samples_without_time"]
        - total_kept)
    con.close()

    ti = np.asarray(columns["ti"])
    window_of = np.full(total_kept, -1, dtype=np.int64)  # sample -> index into windows
    on_text = np.asarray(columns["centre"]) >= 0
    window_of[on_text] = np.arange(on_text.sum())
    bounds = np.searchsorted(ti, np.arange(len(task_keys) + 1))

    parsed = []
    for task_index, key in enumerate(task_keys):
        lo, hi = bounds[task_index], bounds[task_index + 1]
        samples = {name: np.asarray(columns[name][lo:hi]) for name in
                   ("kind", "epoch_ms", "x", "y", "centre", "validate")}
        samples["window"] = window_of[lo:hi]
        parsed.append(_task_turns(key, tasks[key], samples, windows, report))

    _fill_lines(parsed, report)
    turns = [turn for task in parsed for turn in _build_turns(task)]
    if not turns:
        dropped = ", ".join(f"{reason} {count}" for reason, count in
                            sorted(_plain(report)["dropped"].items()))
        raise IfllmFormatError(f"{directory} holds no readable study turns (dropped: "
                               f"{dropped or 'nothing'})")
    report["read"]["turns"] = len(turns)
    matches = [t["window_match"] for t in parsed if not np.isnan(t.get("window_match", np.nan))]
    report["read"]["pairwise_labelled"] = sum(t.pair_label is not None for t in turns)
    report["read"]["pointwise_labelled"] = sum(t.better_than_previous is not None for t in turns)
    report = _plain(report)
    # share of on-text samples whose window is in the answer they were assigned to
    report["quality"] = {"median_task_window_match": round(float(np.median(matches)), 4)
                         if matches else None}
    return IfllmData(str(directory), turns, report)


def _plain(report: dict) -> dict:
    return {part: {k: int(v) for k, v in sorted(counts.items()) if v}
            for part, counts in report.items()}


def _query_times(rows: list, report) -> np.ndarray | None:
    """The queries' times on their own clock, an unparseable one placed between its
    neighbours (the first a second before the next: :func:`_task_turns` moves it before
    the task's first sample once the clock shift is known)."""
    times = np.array([np.nan if r[10] is None else float(r[10]) for r in rows])
    if np.all(np.isnan(times)):
        return None
    for i in np.flatnonzero(np.isnan(times)):
        report["repaired"]["query_timestamp_unparseable"] += 1
        before = times[:i][~np.isnan(times[:i])]
        after = times[i + 1:][~np.isnan(times[i + 1:])]
        if len(before) == 0:
            times[i] = after[0] - 1000.0
        elif len(after) == 0:
            times[i] = before[-1] + 1000.0
        else:
            times[i] = (before[-1] + after[0]) / 2
    return times


def _task_turns(key, rows, samples, windows, report) -> dict:
    """Assign one task's samples to its turns (clock skew fixed) and check offsets."""
    epoch = samples["epoch_ms"].astype(np.float64)
    kind = samples["kind"]
    side = _SIDE[kind]
    responses = [(r[4],) if r[5] is None else (r[4], r[5]) for r in rows]
    times = _query_times(rows, report)
    task = {"key": key, "rows": rows, "responses": responses, "samples": samples,
            "shift_h": 0, "times": times}
    if times is None:
        report["dropped"]["tasks_without_timestamps"] += 1
        report["dropped"]["samples_task_without_timestamps"] += len(epoch)
        return task

    # --- the whole-hour shift under which windows are found in the assigned answer
    texted = np.flatnonzero(samples["window"] >= 0)
    if len(texted):
        window_text = [windows[i] for i in samples["window"][texted]]
        distinct, window_id = np.unique(np.array(window_text, dtype=object), return_inverse=True)
        n_turns = len(rows)
        contains = np.zeros((len(distinct), n_turns, 2), dtype=bool)
        for t, texts in enumerate(responses):
            for s, text in enumerate(texts):
                contains[:, t, s] = [bool(w) and w in text for w in distinct]
        best, best_found = 0, -1
        for shift in sorted(SHIFTS_H, key=abs):
            turn = np.searchsorted(times + shift * HOUR_MS, epoch[texted], side="right") - 1
            ok = turn >= 0
            found = int(contains[window_id[ok], turn[ok], side[texted][ok]].sum())
            if found > best_found:
                best, best_found = shift, found
        task["shift_h"] = best
        if best != 0:
            report["repaired"][f"task_clock_shift_{best:+d}h"] += 1
    shown = times + task["shift_h"] * HOUR_MS
    if rows[0][10] is None and len(epoch):
        # The first answer's time was unparseable: it was shown before the task's first
        # sample. (Placed so before the shift is known, on the samples' clock, it was then
        # shifted: 4 hours off in the study's one such task.)
        shown[0] = min(shown[0], float(epoch[0]))
    last = float(epoch[-1]) + 1.0 if len(epoch) else shown[-1]
    task["shown"] = shown
    task["end"] = np.append(shown[1:], max(last, shown[-1]))
    turn_of = np.searchsorted(shown, epoch, side="right") - 1
    before = turn_of < 0
    report["dropped"]["samples_before_first_answer"] += int(before.sum())
    n_sides = np.array([len(r) for r in responses])
    wrong_side = ~before & (side >= 0) & (side >= n_sides[np.maximum(turn_of, 0)])
    report["dropped"]["samples_side_not_shown"] += int(wrong_side.sum())
    task["turn_of"] = np.where(before | wrong_side, -1, turn_of)

    # --- offsets. Some site versions give centre_idx in the whole answer, others in the
    # DOM text node under the point (a paragraph, a list item): then the window is found
    # elsewhere, at a constant distance for all points of that node. Windows are
    # node.text[centre-10 : centre+10], clipped to the node and stripped.
    offset = samples["centre"].astype(np.int64).copy()
    offset[samples["window"] < 0] = -1
    checked = np.flatnonzero((samples["window"] >= 0) & (task["turn_of"] >= 0) & (side >= 0))
    deltas: dict[tuple, Counter] = {}
    ambiguous = []
    moved = cleared = found_in_answer = 0
    for i in checked:
        box = (int(task["turn_of"][i]), int(side[i]))
        text = responses[box[0]][box[1]]
        window = windows[samples["window"][i]]
        c = int(offset[i])
        if not window:
            offset[i] = -1
            cleared += 1
            continue
        if text.find(window, max(0, c - 12), c + len(window) + 12) >= 0:
            found_in_answer += 1
            continue
        first = text.find(window)
        if first < 0:
            offset[i] = -1
            cleared += 1
            continue
        found_in_answer += 1
        start_in_node = max(0, c - 10)
        if text.find(window, first + 1) < 0:
            offset[i] = first + (c - start_in_node)
            deltas.setdefault(box, Counter())[first - start_in_node] += 1
            moved += 1
        else:
            ambiguous.append((i, box, text, window, c, start_in_node))
    for i, box, text, window, c, start_in_node in ambiguous:
        known = deltas.get(box, Counter())
        best, votes, position = None, 0, text.find(window)
        while position >= 0:
            if known[position - start_in_node] > votes:
                best, votes = position, known[position - start_in_node]
            position = text.find(window, position + 1)
        if best is None:
            offset[i] = -1
            cleared += 1
        else:
            offset[i] = best + (c - start_in_node)
            moved += 1
    report["repaired"]["sample_offset_moved_to_window"] += moved
    report["repaired"]["sample_offset_cleared_window_not_in_answer"] += cleared
    report["read"]["samples_on_text_kept"] += int(len(checked) - cleared)
    task["window_match"] = found_in_answer / len(checked) if len(checked) else float("nan")
    task["offset"] = offset
    return task


def _chars_per_line(points: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]) -> float:
    """Characters per line of one box from its on-text points [(offset, x, y, text)]:
    median pixels per character of nearby points on one line, and the box's text extent."""
    slopes, xs = [], []
    for offset, x, y, text in points:
        if len(offset) < 2:
            xs.append(x)
            continue
        order = np.argsort(offset, kind="stable")
        c, px, py = offset[order], x[order], y[order]
        dc, dx, dy = np.diff(c), np.diff(px), np.diff(py)
        newline = np.cumsum(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == 10)
        newline = np.concatenate([[0], newline])
        same_paragraph = newline[c[1:]] == newline[c[:-1]]
        keep = (dc >= 1) & (dc <= 30) & (np.abs(dy) < 8) & same_paragraph & (dx > 0)
        slopes.append(dx[keep] / dc[keep])
        xs.append(px)
    slopes = np.concatenate(slopes) if slopes else np.zeros(0)
    xs = np.concatenate(xs) if xs else np.zeros(0)
    if len(xs) < _MIN_POINTS_FOR_WRAP or len(slopes) < 5:
        return float("nan")
    extent = np.percentile(xs, 99.5) - np.percentile(xs, 0.5)
    return float(np.clip(extent / np.median(slopes), 20, 400))


def _fill_lines(parsed: list[dict], report) -> None:
    """Chars per line of every (task, side) box, with worker and fixed fallbacks."""
    per_worker: dict[str, list[float]] = {}
    for task in parsed:
        task["cpl"] = {}
        if task["times"] is None:
            continue
        samples, side = task["samples"], _SIDE[task["samples"]["kind"]]
        for s in (0, 1):
            points = []
            for t, texts in enumerate(task["responses"]):
                if s >= len(texts):
                    continue
                mask = (task["turn_of"] == t) & (side == s) & (task["offset"] >= 0) \
                    & (task["offset"] < len(texts[s])) & (samples["x"] >= 0)
                points.append((task["offset"][mask], samples["x"][mask], samples["y"][mask], texts[s]))
            if points:
                task["cpl"][s] = _chars_per_line(points)
                if not np.isnan(task["cpl"][s]):
                    per_worker.setdefault(task["key"][0], []).append(task["cpl"][s])
    for task in parsed:
        for s, cpl in task["cpl"].items():
            if not np.isnan(cpl):
                report["read"]["boxes_wrapped_from_geometry"] += 1
            elif task["key"][0] in per_worker:
                task["cpl"][s] = float(np.median(per_worker[task["key"][0]]))
                report["repaired"]["boxes_wrapped_from_worker_median"] += 1
            else:
                task["cpl"][s] = float(DEFAULT_CHARS_PER_LINE)
                report["repaired"]["boxes_wrapped_at_default_width"] += 1


def turn_key(user_id: str, task_id: int, query_id: int) -> str:
    """A study turn's id (its replies' are ``<id>:1``, ``<id>:2`` and ``<id>:page``): the
    worker and task as well as the query, since another folder in the format may number
    its queries afresh."""
    return f"ifllm:{user_id}/{task_id}/{query_id}"


def _build_turns(task: dict) -> list[Turn]:
    if task["times"] is None:
        return []
    samples = task["samples"]
    kind, side = samples["kind"], _SIDE[samples["kind"]]
    epoch = samples["epoch_ms"].astype(np.float64)
    x = np.where(samples["x"] < 0, np.nan, samples["x"])  # -1, -1 = not over that box
    y = np.where(samples["y"] < 0, np.nan, samples["y"])
    validate = samples["validate"].astype(np.float32)
    confidence = np.where(validate < 0, np.nan, validate)
    user, task_id = task["key"]
    turns = []
    for t, row in enumerate(task["rows"]):
        start, end = task["shown"][t], task["end"][t]
        in_turn = task["turn_of"] == t
        traces = []
        for s, text in enumerate(task["responses"][t]):
            mask = in_turn & (side == s)
            source = _SOURCE[kind[mask]]
            traces.append(ReadingTrace.build(
                t_ms=epoch[mask] - start, offset=task["offset"][mask], text=text,
                line_starts=wrap_line_starts(text, int(round(task["cpl"].get(s, DEFAULT_CHARS_PER_LINE)))),
                x=x[mask], y=y[mask], source=source,
                confidence=np.where(source == GAZE, confidence[mask], 1.0),
                origin="imported", user_id=user, shown_reply_id=f"{turn_key(user, task_id, row[2])}:{s + 1}",
                shown_for_ms=end - start, missing=("visible",), estimated=("line",)))
        page_mask = in_turn & (side < 0)
        page = ReadingTrace.build(
            t_ms=epoch[page_mask] - start, offset=np.full(page_mask.sum(), -1), text="",
            line_starts=np.zeros(1, np.int32), x=x[page_mask], y=y[page_mask],
            source=_SOURCE[kind[page_mask]], origin="imported", user_id=user,
            shown_reply_id=f"{turn_key(user, task_id, row[2])}:page", shown_for_ms=end - start,
            missing=("visible", "confidence"))
        turns.append(Turn(
            user_id=user, task_id=task_id, index=t, query_id=int(row[2]), query=row[3],
            responses=task["responses"][t], shown_epoch_ms=float(start), end_epoch_ms=float(end),
            clock_shift_h=int(task["shift_h"]),
            preference=float("nan") if row[8] is None else float(row[8]),
            likert=tuple(float("nan") if v is None else float(v) for v in row[6:6 + len(task["responses"][t])]),
            adjustment=int(row[9]), traces=tuple(traces), page=page,
            models=tuple(row[11:11 + len(task["responses"][t])])))
    return turns


# --- cache ---------------------------------------------------------------------------
def _fingerprint(directory: Path) -> str:
    parts = [str(CACHE_VERSION), str(directory.resolve())]
    for name in present_files(directory):
        stat = (directory / name).stat()
        parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


_TRACE_FIELDS = ("t_ms", "x", "y", "offset", "source", "confidence")


def _save_cache(path: Path, data: IfllmData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    traces, meta = [], []
    for turn in data.turns:
        entry = {k: getattr(turn, k) for k in (
            "user_id", "task_id", "index", "query_id", "query", "responses", "shown_epoch_ms",
            "end_epoch_ms", "clock_shift_h", "preference", "likert", "adjustment", "models")}
        entry["line_starts"] = [tr.line_starts.tolist() for tr in turn.traces]
        meta.append(entry)
        traces.extend(turn.traces)
        traces.append(turn.page)
    lengths = np.array([len(t) for t in traces], dtype=np.int64)
    arrays = {name: np.concatenate([getattr(t, name) for t in traces]) for name in _TRACE_FIELDS}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, lengths=lengths, meta=np.array(json.dumps({"turns": meta, "report": data.report})),
             **arrays)
    os.replace(tmp, path)


def _load_cache(path: Path, directory: Path) -> IfllmData:
    with np.load(path, allow_pickle=False) as npz:
        stored = json.loads(str(npz["meta"]))
        lengths = npz["lengths"]
        arrays = {name: npz[name] for name in _TRACE_FIELDS}
    cut = np.concatenate([[0], np.cumsum(lengths)])
    turns, k = [], 0
    for entry in stored["turns"]:
        line_starts = entry.pop("line_starts")
        entry["responses"] = tuple(entry["responses"])
        entry["likert"] = tuple(entry["likert"])
        entry["models"] = tuple(entry.get("models", ()))
        duration = entry["end_epoch_ms"] - entry["shown_epoch_ms"]
        key = turn_key(entry["user_id"], entry["task_id"], entry["query_id"])
        traces = []
        for s, text in enumerate(entry["responses"]):
            part = {name: a[cut[k]:cut[k + 1]] for name, a in arrays.items()}
            traces.append(ReadingTrace.build(
                **part, text=text, line_starts=np.asarray(line_starts[s], np.int32),
                origin="imported", user_id=entry["user_id"],
                shown_reply_id=f"{key}:{s + 1}", shown_for_ms=duration,
                missing=("visible",), estimated=("line",)))
            k += 1
        part = {name: a[cut[k]:cut[k + 1]] for name, a in arrays.items()}
        page = ReadingTrace.build(**{**part, "confidence": None}, text="",
                                  line_starts=np.zeros(1, np.int32), origin="imported",
                                  user_id=entry["user_id"],
                                  shown_reply_id=f"{key}:page",
                                  shown_for_ms=duration, missing=("visible",))
        k += 1
        turns.append(Turn(**entry, traces=tuple(traces), page=page))
    return IfllmData(str(directory), turns, stored["report"])


# --- subsets (pseudo-holdout, test folders) -------------------------------------------
def write_subset(source, target, workers, exclude: bool = False) -> dict:
    """Copy the rows of ``workers`` (or of everyone else, with ``exclude``) from one
    IFLLM folder into a new folder in the same format, with DuckDB's COPY. Returns the
    number of rows written per file."""
    source, target = Path(source), Path(target)
    check_folder(source)
    if target.exists() and (target.resolve() == source.resolve() or any(target.iterdir())):
        raise ValueError(f"{target} is not empty (or is the source folder): a subset is "
                         "written into a new or empty folder, so nothing is overwritten.")
    con = connect()
    present = {row[0] for row in con.execute(
        f"select user_id::varchar from {_sql_path(source / 'queries.parquet')} union "
        f"select worker::varchar from {_sql_path(source / 'samples.parquet')}").fetchall()}
    workers = [str(worker) for worker in workers]     # (a JSON list of numbers)
    unknown = sorted(set(workers) - present)
    if unknown:        # (a mistyped id was left out without a word)
        con.close()
        raise ValueError(f"not in {source}: {', '.join(unknown[:5])}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                         + "; nothing was written")
    target.mkdir(parents=True, exist_ok=True)
    con.execute("create temp table chosen (worker varchar)")
    con.executemany("insert into chosen values (?)", [(w,) for w in sorted(set(workers))])
    test = "not in" if exclude else "in"
    counts = {}
    for name, column in (("queries", "user_id"), ("tasks", "user_id"), ("workers", "user_id"),
                         ("samples", "worker")):
        if not (source / f"{name}.parquet").is_file():
            continue                      # an optional file this folder does not have
        src, dst = _sql_path(source / f"{name}.parquet"), _sql_path(target / f"{name}.parquet")
        counts[name] = con.execute(
            f"copy (select * from {src} where {column} {test} (select worker from chosen)) "
            f"to {dst} (format parquet)").fetchone()[0]
    con.close()
    if not counts.get("queries"):
        found = "none of the workers given" if not exclude else "no worker outside those given"
        counts["warning"] = f"{found} is in {source}: the subset is empty"
    return counts
