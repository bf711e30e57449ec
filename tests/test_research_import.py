"""`align import-ifllm`: research data in the encrypted store, in its own scope.

A small IFLLM folder built from the real study files (two workers: pairwise and
pointwise turns, one with a 4-hour clock skew) is imported into a real store."""
import json

import numpy as np
import pytest

from test_reward import IFLLM, require_ifllm

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
        assert (other.pair_label, other.better_than_previous) == (turn.pair_label, turn.better_than_previous)
        assert other.responses == turn.responses and other.models == turn.models
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
    empty = write_subset(folder, tmp_path / "nobody", ["no-such-worker"])
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
    assert "no side-by-side picks of yours yet" in capsys.readouterr().err
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
