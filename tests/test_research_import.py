"""`align import-ifllm`: research data in the encrypted store, in its own scope.

A small IFLLM folder built from the real study files (two workers: pairwise and
pointwise turns, one with a 4-hour clock skew) is imported into a real store."""
import json

import numpy as np
import pytest

from test_reward import IFLLM, assert_same_turn_fields, require_ifllm

WORKERS = ["worker_a2b63b0c", "worker_129661d9"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    require_ifllm()
    from align.ifllm import write_subset
    path = tmp_path_factory.mktemp("research") / "ifllm"
    write_subset(IFLLM, path, WORKERS)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANCE_CACHE_DIR", str(tmp_path / "cache"))


def research_counts(store) -> dict:
    return {k: v for k, v in store.counts().items() if k.startswith("research_")}


def test_import_is_complete_idempotent_and_reads_back_exactly(store, folder, cache):
    from align.ifllm import read_ifllm
    from align.research import import_ifllm, read_research
    data = read_ifllm(folder)
    report = import_ifllm(store, folder)
    counts = research_counts(store)
    assert counts["research_turns"] == len(data.turns) == report["read"]["turns"]
    assert counts["research_samples"] == sum(len(tr) for t in data.turns for tr in (*t.traces, t.page))
    assert counts["research_shown_replies"] == sum(len(t.traces) + 1 for t in data.turns)
    assert counts["research_imports"] == 1 and report["replaced_previous_import"] is False
    assert report["repaired"]["task_clock_shift_-4h"] >= 1

    again = import_ifllm(store, folder)               # same data again: replaced, not doubled
    assert again["replaced_previous_import"] is True and research_counts(store) == counts

    back = {t.query_id: t for t in read_research(store).turns}
    for turn in data.turns:
        other = back[turn.query_id]
        assert_same_turn_fields(other, turn)
        assert (other.pair_label, other.better_than_previous) == (turn.pair_label, turn.better_than_previous)
        if turn.pairwise:
            assert other.pair.pick_t_ms == turn.pair.pick_t_ms > 0
        for a, b in zip((*turn.traces, turn.page), (*other.traces, other.page)):
            for name, array in a.arrays().items():
                assert np.array_equal(array, getattr(b, name), equal_nan=array.dtype.kind == "f"), name
            assert b.origin == "imported" and b.estimated == a.estimated


def test_an_overlapping_folder_replaces_the_turns_it_shares_instead_of_doubling_them(
        store, folder, cache, tmp_path):
    """Row ids are the study's own, and only rows of the same folder content were
    replaced: a one-worker subset, then a two-worker folder holding it, gave that
    worker's turns twice and every sample of their traces twice. A folder moved or
    deleted since could not be removed by its path either."""
    import shutil
    from align.ifllm import read_ifllm, write_subset
    from align.research import import_ifllm, read_research, remove_research
    one = tmp_path / "one-worker"
    write_subset(folder, one, WORKERS[:1])
    first = import_ifllm(store, one)
    second = import_ifllm(store, folder)              # both workers, the first one again
    whole = read_ifllm(folder)
    back = read_research(store)
    assert sorted(t.query_id for t in back.turns) == sorted(t.query_id for t in whole.turns)
    assert research_counts(store)["research_samples"] == \
        sum(len(tr) for t in whole.turns for tr in (*t.traces, t.page))
    assert second["superseded"]["research_imports"] == 1     # the subset held nothing more
    assert first["import_id"] != second["import_id"]
    moved = tmp_path / "moved"
    shutil.copytree(folder, tmp_path / "copy")
    import_ifllm(store, tmp_path / "copy")
    shutil.move(tmp_path / "copy", moved)              # the folder imported is gone from there
    gone = remove_research(store, tmp_path / "copy")
    assert gone["removed"]["research_imports"] == 1
    assert set(research_counts(store).values()) == {0}


def test_research_scope_survives_retention_and_conversation_deletion(store, folder, cache):
    from align.research import import_ifllm, remove_research
    from feedback_store import Conversation, Message
    import_ifllm(store, folder)
    before = research_counts(store)
    store.conversations.create(Conversation(title="mine", id="mine"))
    store.conversations.add_message(Message(conversation_id="mine", role="user", content="x"))
    store.apply_retention(now_wall_ns=2**62)           # far future: every signal expires
    store.delete_conversation("mine", compact=False)
    assert research_counts(store) == before

    store.conversations.create(Conversation(title="kept", id="kept"))
    removed = remove_research(store)
    assert removed["removed"]["research_samples"] == before["research_samples"]
    assert set(research_counts(store).values()) == {0}
    assert store.counts()["conversations"] == 1        # the user's data is untouched


def test_cli_imports_and_removes(home, folder, cache, capsys):
    from align.cli import main
    from feedback_store import FeedbackStore
    assert main(["import-ifllm", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["written"]["research_turns"] == result["read"]["turns"]
    assert {"read", "repaired", "dropped"} <= set(result)
    with FeedbackStore.open(home) as store:
        assert research_counts(store)["research_imports"] == 1
    capsys.readouterr()
    assert main(["import-ifllm", str(folder.parent / "never-imported"), "--remove"]) == 0
    assert "Nothing to remove: no import of the data in" in capsys.readouterr().out
    assert main(["import-ifllm", "--remove", "--json"]) == 0
    with FeedbackStore.open(home) as store:
        assert set(research_counts(store).values()) == {0}
    capsys.readouterr()
    assert main(["import-ifllm", "--remove"]) == 0
    assert "Nothing to remove: no study data is imported." in capsys.readouterr().out


def test_cli_refuses_a_folder_that_is_not_ifllm_before_opening_the_store(home, tmp_path, capsys,
                                                                          folder):
    from align.cli import main
    (tmp_path / "queries.parquet").write_text("not parquet")
    assert main(["import-ifllm", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing samples.parquet" in err
    assert not home.exists()                        # nothing was created for a bad argument
    # The same for training and evaluating: refused before the store opens or a fit starts.
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for argv, says in ((["reward", "train", "--ifllm", str(tmp_path / "nowhere")], "does not exist"),
                       (["reward", "train", "--out", str(a_file)], "is a file, not a folder"),
                       (["reward", "train", "--ifllm", str(folder), "--out", str(a_file / "models")],
                        f"cannot be made: {a_file} is a file"),
                       (["reward", "evaluate", "--ifllm", str(folder), "--holdout", str(a_file)],
                        f"{a_file} is a file, not a folder")):
        assert main(argv) == 2, argv
        assert says in capsys.readouterr().err, argv
    assert not home.exists()


def test_reward_training_uses_imported_research_only_when_asked(home, cache, tmp_path, capsys):
    """Imported study data sits in the store beside the user's own, but `align reward
    train` learns from it only with --research; without it there is nothing to learn."""
    from align.cli import main
    from align.ifllm import write_subset
    from feedback_store import FeedbackStore
    from test_reward import WORKERS as MORE_WORKERS
    folder = tmp_path / "study"
    write_subset(IFLLM, folder, MORE_WORKERS)
    assert main(["import-ifllm", str(folder), "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "models"
    assert main(["reward", "train", "--out", str(out), "--json"]) == 2
    assert "not used while the personalisation consent is off" in capsys.readouterr().err
    assert not list(out.glob("reward-*.json"))
    assert main(["reward", "train", "--research", "--task", "pairwise", "--out", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = json.loads(open(written["pairwise"]["path"]).read())
    assert model["info"]["source"] == "research" and model["info"]["live_pairs"] == 0
    assert model["metrics"]["train_users"] >= 2          # the study workers, not one "user"
    # Said in words, with why none of the examples are the user's (a bare "0 of them your
    # own" left them guessing); then with the consent on and nothing read in the window.
    assert main(["reward", "train", "--research", "--task", "pairwise", "--out", str(out)]) == 0
    assert ("0 of them your own: personalisation is off (glance consent set personalise on)"
            in capsys.readouterr().out)
    with FeedbackStore.open(home) as store:
        store.consent.set("personalise", True)
    assert main(["reward", "train", "--research", "--task", "pairwise", "--out", str(out)]) == 0
    assert "0 of them your own: a label counts once its replies were shown and read" in \
        capsys.readouterr().out


def test_the_nightly_refresh_keeps_the_imported_study_as_prior_and_stops_when_it_is_removed(
        home, cache, tmp_path, capsys):
    """Models trained with --research are retrained on new picks with the imported study
    again; once the import is removed the refresh waits rather than drop the prior."""
    from align.cli import main
    from align.ifllm import write_subset
    from test_reward import WORKERS as MORE_WORKERS
    folder = tmp_path / "study"
    write_subset(IFLLM, folder, MORE_WORKERS)
    from align.reward import RewardModel
    from align.train import refresh
    from app.session import AppSession
    from feedback_store import FeedbackStore
    from test_scoring import read_pair_and_pick
    assert main(["import-ifllm", str(folder), "--json"]) == 0
    assert main(["reward", "train", "--research", "--json"]) == 0
    capsys.readouterr()

    def pick():
        with FeedbackStore.open(home) as store:
            for signal in ("pointer", "personalise"):
                store.consent.set(signal, True)
            session = AppSession(store)
            read_pair_and_pick(store, session, -1)
            session.close()
    pick()
    done = refresh(home)
    assert done["status"] == "trained", done
    for task in ("pairwise", "pointwise"):
        assert "path" in done["written"][task], done["written"]
        model = RewardModel.load(done["written"][task]["path"])
        assert model.info["source"] == "research+live" and model.info["live_pairs"] == 1
    assert main(["import-ifllm", "--remove", "--json"]) == 0
    pick()
    done = refresh(home)
    assert done["status"] == "skipped" and "was removed" in done["reason"]


def test_a_subset_never_overwrites_a_folder(folder, tmp_path):
    """`align ifllm-subset SRC SRC` replaced the study folder by a subset of itself, and an
    existing folder's files were overwritten without a word."""
    from align.ifllm import write_subset
    before = {p.name: p.stat().st_size for p in folder.iterdir()}
    for target in (folder, tmp_path / "taken"):
        if target != folder:
            target.mkdir()
            (target / "notes.txt").write_text("mine")
        with pytest.raises(ValueError, match="not empty"):
            write_subset(folder, target, WORKERS[:1])
    assert {p.name: p.stat().st_size for p in folder.iterdir()} == before
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    # A worker id not in the folder (a typo) was left out without a word: refused.
    with pytest.raises(ValueError, match="not in .*: no-such-worker; nothing was written"):
        write_subset(folder, tmp_path / "nobody", [WORKERS[0], "no-such-worker"])
    assert not (tmp_path / "nobody").exists()
    with pytest.raises(ValueError, match="not in .*: 1234; nothing"):   # a JSON list of numbers
        write_subset(folder, tmp_path / "nobody", [1234, WORKERS[0]])
    empty = write_subset(folder, tmp_path / "nobody", WORKERS, exclude=True)
    assert empty["queries"] == 0 and "the subset is empty" in empty["warning"]
    from align.ifllm import IfllmFormatError, read_ifllm
    with pytest.raises(IfllmFormatError, match="holds no study turns"):     # not a DuckDB error
        read_ifllm(tmp_path / "nobody")


def test_a_query_without_an_id_is_dropped_and_counted(folder, tmp_path):
    """Lenient as the issue asks: a row without a worker or task was dropped and counted,
    one without a query id stopped the import with a TypeError traceback."""
    import shutil
    import duckdb
    from align.ifllm import read_ifllm
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    queries = damaged / "queries.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * REPLACE (CASE WHEN query_ID = (SELECT max(query_ID) FROM "
                f"'{queries}') THEN NULL ELSE query_ID END AS query_ID) FROM '{queries}') "
                f"TO '{tmp_path / 'q.parquet'}' (FORMAT parquet)")
    con.close()
    shutil.move(tmp_path / "q.parquet", queries)
    data = read_ifllm(damaged)
    assert data.report["dropped"]["queries_without_query_id"] == 1
    assert len(data.turns) == len(read_ifllm(folder).turns) - 1


def test_commands_that_only_read_make_nothing_and_bad_folders_get_one_line(home, tmp_path,
                                                                           capsys, folder, cache,
                                                                           monkeypatch):
    """`align reward scores`, `import-ifllm --remove` and `reward train` made a database and
    a key in a folder Glance was never used in (or emptied by Delete everything); a study
    folder with the right columns of the wrong type was a DuckDB traceback; a missing
    folder was "missing queries.parquet, samples.parquet"; GLANCE_HOME naming a file was
    a traceback or "fix its permissions"; --research with nothing imported said "0
    examples"."""
    import duckdb
    import shutil
    from align.cli import main
    assert main(["reward", "scores"]) == 0
    assert "No reply has been scored yet" in capsys.readouterr().out
    assert main(["import-ifllm", "--remove"]) == 0
    assert "no study data is imported" in capsys.readouterr().out
    assert main(["reward", "train", "--out", str(tmp_path / "models")]) == 2
    assert "no side-by-side picks of yours with their reading yet" in capsys.readouterr().err
    assert main(["reward", "train", "--research", "--out", str(tmp_path / "models")]) == 2
    assert "No study data is imported" in capsys.readouterr().err
    assert not home.exists()                            # nothing made for any of them
    from feedback_store import FeedbackStore
    FeedbackStore.open(home).close()                    # Glance used, no study imported
    assert main(["reward", "train", "--research", "--out", str(tmp_path / "models")]) == 2
    assert "No study data is imported" in capsys.readouterr().err

    assert main(["reward", "evaluate", "--ifllm", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    typed = tmp_path / "typed"
    shutil.copytree(folder, typed)
    samples = typed / "samples.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * REPLACE ('x' || x::varchar AS x) FROM '{samples}') "
                f"TO '{tmp_path / 's.parquet'}' (FORMAT parquet)")
    con.close()
    shutil.move(tmp_path / "s.parquet", samples)
    for argv in (["import-ifllm", str(typed)], ["reward", "evaluate", "--ifllm", str(typed)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "cannot be read as IFLLM data" in err and "Traceback" not in err, err

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    monkeypatch.setenv("GLANCE_HOME", str(a_file))
    for argv in (["status"], ["reward", "scores"], ["import-ifllm", str(folder)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (1, 2) and "is a file, not a folder" in err, (argv, err)
        assert "permissions" not in err


def rewrite(folder, target, queries_sql=None, samples_sql=None):
    """A copy of ``folder`` whose queries / samples files are the SQL given, over the
    originals as ``q`` / ``s``."""
    import shutil
    import duckdb
    shutil.copytree(folder, target)
    con = duckdb.connect()
    for name, sql in (("queries", queries_sql), ("samples", samples_sql)):
        if sql:
            con.execute(f"CREATE VIEW {name[0]} AS SELECT * FROM '{folder / (name + '.parquet')}'")
            con.execute(f"COPY ({sql}) TO '{target / (name + '.parquet')}' (FORMAT parquet)")
    con.close()
    return target


def test_stray_cells_are_cleared_and_counted_and_every_dropped_sample_has_one_reason(
        folder, tmp_path, cache):
    """One "n/a" in a rating or an id column stopped the whole import; a sample of no
    known kind and without a time was dropped twice (once per reason), so the duplicates,
    found by subtraction, came out negative; a negative centre_idx shifted the window of
    every later sample of the folder (2,376 offsets "moved", against 50)."""
    from align.ifllm import read_ifllm
    whole = read_ifllm(folder)
    damaged = rewrite(folder, tmp_path / "damaged", queries_sql="""
        SELECT * REPLACE (CASE WHEN query_ID = (SELECT min(query_ID) FROM q WHERE likert_1 IS NOT NULL)
                          THEN 'n/a' ELSE likert_1::VARCHAR END AS likert_1) FROM q""",
        samples_sql="""
        SELECT * REPLACE (
            CASE WHEN row_number() OVER () = 1000 THEN NULL ELSE kind END AS kind,
            CASE WHEN row_number() OVER () = 1000 THEN NULL ELSE epoch_ms END AS epoch_ms,
            CASE WHEN row_number() OVER () = 2000 THEN 'n/a' ELSE task_id::VARCHAR END AS task_id,
            CASE WHEN row_number() OVER () = (SELECT min(r) FROM (SELECT row_number() OVER () AS r,
                 centre_idx FROM s) WHERE centre_idx IS NOT NULL) THEN -1 ELSE centre_idx END AS centre_idx)
        FROM s""")
    data = read_ifllm(damaged)
    assert data.report["repaired"]["queries_likert_1_not_a_number_cleared"] == 1
    assert data.report["repaired"]["samples_task_id_not_a_number_cleared"] == 1
    assert len(data.turns) == len(whole.turns)
    assert sum(np.isnan(t.likert[0]) for t in data.turns) == sum(np.isnan(t.likert[0]) for t in whole.turns) + 1
    dropped, before = data.report["dropped"], whole.report["dropped"]
    assert dropped["samples_unknown_kind"] == before.get("samples_unknown_kind", 0) + 1
    assert dropped.get("samples_without_time", 0) == before.get("samples_without_time", 0)
    assert dropped["samples_task_without_queries"] == before.get("samples_task_without_queries", 0) + 1
    assert dropped["abs_gaze_duplicate_rows"] == before["abs_gaze_duplicate_rows"]
    moved = "sample_offset_moved_to_window"
    assert abs(data.report["repaired"].get(moved, 0) - whole.report["repaired"].get(moved, 0)) <= 1


def test_an_unparseable_first_timestamp_is_placed_before_the_first_sample_on_its_own_clock(
        tmp_path, cache):
    """The study's one query without a time (worker_998a6ee4, task 88, a task whose
    query clock is 4 h off) was placed at the first sample on the samples' clock and then
    shifted by the task's 4 hours: its answer's reading began 4 h after it was shown."""
    require_ifllm()
    from align.ifllm import read_ifllm, write_subset
    write_subset(IFLLM, tmp_path / "one", ["worker_998a6ee4"])
    data = read_ifllm(tmp_path / "one")
    assert data.report["repaired"]["query_timestamp_unparseable"] == 1
    turn = next(t for t in data.turns if t.query_id == 443)
    assert turn.index == 0 and turn.clock_shift_h != 0
    assert turn.end_epoch_ms - turn.shown_epoch_ms < 3_600_000
    first = min(float(tr.t_ms[0]) for tr in (*turn.traces, turn.page) if len(tr))
    assert 0 <= first < 60_000


def test_folders_that_number_their_queries_alike_stay_apart(store, folder, cache, tmp_path):
    """Row ids were the query's id alone: a second folder in the format numbering its
    queries from the same start had its traces merged with the first's when read back,
    and importing the first again deleted the second's samples. Removing a folder by its
    path also removed an earlier import of other data from that path."""
    import shutil
    from align.ifllm import read_ifllm, write_subset
    from align.research import import_ifllm, read_research, remove_research
    first, second = tmp_path / "first", tmp_path / "second"
    write_subset(folder, first, WORKERS[:1])
    write_subset(folder, tmp_path / "other", WORKERS[1:])
    offset = "(SELECT min(query_ID) FROM q) - (SELECT min(query_ID) FROM '{}')".format(first / "queries.parquet")
    rewrite(tmp_path / "other", second, queries_sql=f"SELECT * REPLACE (query_ID - ({offset}) AS query_ID) FROM q")
    ids = [{t.query_id for t in read_ifllm(f).turns} for f in (first, second)]
    assert ids[0] & ids[1]                                    # the two number alike
    expected = {(t.user_id, t.query_id): t for f in (first, second) for t in read_ifllm(f).turns}

    def read_back_exactly():
        back = {(t.user_id, t.query_id): t for t in read_research(store).turns}
        assert back.keys() == expected.keys()
        for key, turn in expected.items():
            for a, b in zip((*turn.traces, turn.page), (*back[key].traces, back[key].page)):
                assert np.array_equal(a.t_ms, b.t_ms) and np.array_equal(a.offset, b.offset)
    import_ifllm(store, first)
    import_ifllm(store, second)
    read_back_exactly()
    copy = tmp_path / "first-copy"                            # another import of the first
    shutil.copytree(first, copy)
    (copy / "workers.parquet").unlink(missing_ok=True)
    shutil.copy(first / "queries.parquet", copy / "queries.parquet")
    import_ifllm(store, copy)
    read_back_exactly()

    place = tmp_path / "place"                                # one path, two contents
    shutil.copytree(first, place)
    import_ifllm(store, place)
    shutil.rmtree(place)
    shutil.copytree(second, place)
    import_ifllm(store, place)
    remove_research(store, place, compact=False)
    assert {t.user_id for t in read_research(store).turns} == set(WORKERS[:1])


def test_ctrl_c_in_an_align_command_stops_it_with_a_line_not_a_traceback(tmp_path):
    """Ctrl-C ended every align command in a traceback (during a query, DuckDB's "Query
    interrupted"). A long evaluation, stopped a few seconds in, wherever it is."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    require_ifllm()
    env = dict(os.environ, GLANCE_HOME=str(tmp_path / "home"), GLANCE_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.Popen([sys.executable, "-m", "align.cli", "reward", "evaluate", "--ifllm",
                            str(IFLLM), "--json"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err and b"align: stopped" in err


def test_ctrl_c_while_an_import_is_written_says_it_was_finished(folder, home, cache, capsys):
    """Once the import's transaction is with the store's writer it runs to its end (the
    store's close waits for it), yet Ctrl-C then printed "stopped" and exit 130: the user
    believed nothing was imported. Here Ctrl-C comes as the first rows are written."""
    import os
    import signal
    import align.research
    from align.cli import main
    from align.research import read_research
    from feedback_store import FeedbackStore
    real_insert = align.research._insert
    sent = []

    def insert_then_ctrl_c(*args):
        if not sent:                         # (on the writer's thread: the main one waits)
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real_insert(*args)
    align.research._insert = insert_then_ctrl_c
    try:
        assert main(["import-ifllm", str(folder)]) == 0
    finally:
        align.research._insert = real_insert
    assert sent and "the import was finished, not stopped halfway" in capsys.readouterr().err
    with FeedbackStore.open(home) as store:
        assert {t.user_id for t in read_research(store).turns} == set(WORKERS)


def test_answers_stored_as_numbers_are_read_as_text(folder, tmp_path, cache):
    """Another folder in the same format stored an answer column as integers: every
    command reading it ended in a traceback."""
    from align.ifllm import read_ifllm
    whole = read_ifllm(folder)
    numbers = rewrite(folder, tmp_path / "numbers", queries_sql="""
        SELECT * REPLACE (length(llm_response_2)::BIGINT AS llm_response_2) FROM q""")
    data = read_ifllm(numbers)
    assert len(data.turns) == len(whole.turns) and any(w.pairwise for w in whole.turns)
    assert all(t.responses[1] == str(len(w.responses[1])) for t, w in zip(data.turns, whole.turns)
               if w.pairwise)
