"""Adapter versions on disk (publish, keep 5, rollback, base-model check, a publish that
dies half-way) and the schedule files for every system, written into a temporary HOME."""
import json
import os
import plistlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from align import adapters, schedule
from conftest import ROOT


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "base.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def fake_adapter(tmp_path, name="a.gguf", payload=b"GGUF-adapter"):
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def publish(config, tmp_path, model, n):
    return adapters.publish(config, fake_adapter(tmp_path, payload=f"adapter {n}".encode()), None,
                            {"base": adapters.base_identity(model), "pairs": {"train": n}})


def other_model(tmp_path) -> Path:
    """A second base model (another size, other bytes)."""
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\1" * 90)
    return other


def publish_for(config, tmp_path, base_model) -> str:
    return adapters.publish(config, fake_adapter(tmp_path, "b.gguf", b"other adapter"), None,
                            {"base": adapters.base_identity(base_model), "pairs": {"train": 1}})


def align_in(home, *args, code=0):
    """``align ARGS`` on the data folder ``home``; its exit code must be ``code``."""
    done = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=dict(os.environ, GLANCE_HOME=str(home)))
    assert done.returncode == code, done.stdout + done.stderr
    return done


def test_publish_keeps_five_versions_and_rolls_back_to_the_base(tmp_path, model):
    config = adapters.AdapterConfig(tmp_path / "adapters")
    published = [publish(config, tmp_path, model, n) for n in range(1, 8)]
    assert published == [f"v{n:04d}" for n in range(1, 8)]
    assert adapters.versions(config.root) == published[-5:]          # the two oldest went
    active = adapters.active_adapter(config.root, model)
    assert active["version"] == "v0007" and Path(active["path"]).read_bytes() == b"adapter 7"
    assert adapters.rollback(config) == "v0006"
    assert adapters.active_adapter(config.root, model)["version"] == "v0006"
    for expected in ("v0005", "v0004", "v0003", None):
        assert adapters.rollback(config) == expected
    assert adapters.active_adapter(config.root, model) is None
    with pytest.raises(ValueError, match="base model"):
        adapters.rollback(config)
    # A new publish continues the numbering and becomes active; pruning spares the active one.
    adapters.set_active(config, "v0003")
    assert publish(config, tmp_path, model, 8) == "v0008"
    assert adapters.read_active(config.root)["version"] == "v0008"
    listed = adapters.list_versions(config.root)
    assert [v["version"] for v in listed] == ["v0004", "v0005", "v0006", "v0007", "v0008"]
    assert [v["active"] for v in listed] == [False] * 4 + [True]


def test_an_adapter_is_used_only_with_the_base_it_was_trained_on(tmp_path, model):
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 100)
    assert adapters.active_adapter(config.root, model) is not None
    assert adapters.active_adapter(config.root, other) is None
    # An updated model of the same name and size (requantised weights): not the same base.
    updated = tmp_path / "update" / model.name
    updated.parent.mkdir()
    updated.write_bytes(b"GGUF" + b"\1" * 60)
    assert adapters.active_adapter(config.root, updated) is None
    copy = tmp_path / "copy" / model.name                      # the same file elsewhere: fits
    copy.parent.mkdir()
    copy.write_bytes(model.read_bytes())
    assert adapters.active_adapter(config.root, copy) is not None
    # A version recorded before the digest existed is matched by name and size.
    info = json.loads((config.root / "v0001" / "manifest.json").read_text())
    del info["base"]["sample_sha256"]
    (config.root / "v0001" / "manifest.json").write_text(json.dumps(info))
    assert adapters.active_adapter(config.root, model) is not None


def test_a_publish_that_dies_half_way_leaves_the_active_version_alone(tmp_path, model, monkeypatch):
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)

    def broken_rename(source, target):
        raise OSError("disk full")
    monkeypatch.setattr(adapters.os, "rename", broken_rename)
    with pytest.raises(OSError):
        publish(config, tmp_path, model, 2)
    monkeypatch.undo()
    assert adapters.read_active(config.root)["version"] == "v0001"
    assert adapters.versions(config.root) == ["v0001"]
    assert not list(config.root.glob(".staging-*"))


def test_a_version_is_in_use_only_after_it_is_recorded(tmp_path, model):
    """The nightly job records a version (and the pairs it learned from) before it is used:
    a job killed or failing in between left an adapter in use with no record, so deleting a
    conversation it learned from could not retire it."""
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)
    seen = []

    def record(version):
        seen.append((version, adapters.read_active(config.root)["version"],
                     adapters.versions(config.root)))
        raise RuntimeError("the database stayed busy")
    with pytest.raises(RuntimeError):
        adapters.publish(config, fake_adapter(tmp_path, payload=b"adapter 2"), None,
                         {"base": adapters.base_identity(model)}, before_activating=record)
    assert seen == [("v0002", "v0001", ["v0001"])]        # hidden and unused while recording
    assert adapters.read_active(config.root)["version"] == "v0001"
    assert sorted(p.name for p in config.root.iterdir()) == [".active.lock", "active.json", "v0001"]

    def retired_meanwhile(version):     # a conversation it learned from was deleted
        adapters.retire(config, version)
    assert adapters.publish(config, fake_adapter(tmp_path, payload=b"adapter 3"), None,
                            {"base": adapters.base_identity(model)},
                            before_activating=retired_meanwhile) is None
    assert adapters.read_active(config.root)["version"] == "v0001"
    assert adapters.versions(config.root) == ["v0001"]
    assert publish(config, tmp_path, model, 4) == "v0004"    # a spent number is not reused


def test_a_publish_clears_what_dead_publishes_left_and_spares_one_under_way(tmp_path, model):
    """A publish killed half-way leaves a staging or pending folder; the next one removes
    those over an hour old. A pending version younger than that may be another job's
    being recorded: it stays, and its number is not handed out again. A folder gone
    between the listing and the look (retired meanwhile) is no error."""
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)
    two_hours_ago = os.stat(config.root).st_mtime - 7200
    for name in (".staging-deadbeef", f"{adapters.PENDING}v0002"):
        (config.root / name).mkdir()
        (config.root / name / "adapter.gguf").write_bytes(b"half")
        os.utime(config.root / name, (two_hours_ago, two_hours_ago))
    (config.root / f"{adapters.PENDING}v0003").mkdir()
    (config.root / ".staging-gone").symlink_to(config.root / "no-such-folder")
    assert publish(config, tmp_path, model, 4) == "v0004"
    assert sorted(p.name for p in config.root.iterdir()) == \
        [".active.lock", f"{adapters.PENDING}v0003", ".staging-gone", "active.json", "v0001", "v0004"]


def test_publishing_after_everything_was_deleted_writes_nothing(tmp_path, model):
    """The user deleted everything after the job last checked its conversations: the
    publish must not create adapters/ (with a version and its counter) in the wiped
    folder, and the run is cancelled rather than recorded."""
    from align import nightly
    home = tmp_path / "home"
    home.mkdir()                      # wiped: no glance.db
    work = tmp_path / "work"
    work.mkdir()
    outcome = {"publish": True, "gguf": fake_adapter(tmp_path), "peft": None, "reasons": [],
               "report": {}, "work": work}
    result = {"run_id": "r1", "pairs": {}, "published": False, "timings": {}, "began": True}
    with pytest.raises(nightly.DataDeleted):
        nightly._publish_and_record(nightly.NightlyConfig(data_dir=home), result, outcome,
                                    [], [], model, set(), 0, 0.0, log=lambda m: None)
    assert list(home.iterdir()) == []


def test_retiring_the_active_version_falls_back_to_the_one_before(tmp_path, model):
    config = adapters.AdapterConfig(tmp_path / "adapters")
    for n in (1, 2, 3):
        publish(config, tmp_path, model, n)
    assert adapters.retire(config, "v0003") == "v0002"
    assert adapters.versions(config.root) == ["v0001", "v0002"]
    assert adapters.retire(config, "v0001") == "v0002"          # not active: just removed


def test_each_model_keeps_its_own_adapter_when_the_chat_switches_between_them(tmp_path, model):
    """One active.json for all models: after a night trained another model's version,
    switching back showed "No personal adapter yet" although this model's was kept, and
    rollback named a version of the other model that the chat would never use."""
    other = other_model(tmp_path)
    config = adapters.AdapterConfig(tmp_path / "adapters")
    mine = publish(config, tmp_path, model, 1)
    theirs = publish_for(config, tmp_path, other)
    assert adapters.read_active(config.root)["version"] == theirs
    assert adapters.active_adapter(config.root, other)["version"] == theirs
    assert adapters.active_adapter(config.root, model)["version"] == mine     # (was None)
    assert adapters.rollback(config) is None        # the other model's line: to its base
    publish(config, tmp_path, model, 2)
    assert adapters.rollback(config) == mine and adapters.rollback(config) is None


def test_cli_lists_and_rolls_back(tmp_path, model):
    home = tmp_path / "home"
    config = adapters.AdapterConfig(adapters.adapters_dir(home))
    for n in (1, 2):
        publish(config, tmp_path, model, n)
    env = dict(os.environ, GLANCE_HOME=str(home))

    def align(*args):
        done = subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout
    listed = json.loads(align("adapters", "list", "--json"))["versions"]
    assert [(v["version"], v["active"]) for v in listed] == [("v0001", False), ("v0002", True)]
    assert json.loads(align("rollback", "--json")) == {"active": "v0001", "model": "base.gguf"}
    said = align("rollback")
    assert said == "Now using the base model (no adapter) for base.gguf.\n"
    assert json.loads(align("status", "--json"))["active"] is None
    assert "v0001" in align("adapters", "list")          # pairs shown as a number, not a dict
    (home / "adapters" / "active.json").write_text("{damaged")
    assert "active.json is damaged, so the chat uses the base model" in align("status")
    assert json.loads(align("status", "--json"))["active_file_damaged"] is True
    for readable_but_wrong in ("null", "[]", '"v0001"', '{"version": 5}'):   # (tracebacks)
        (home / "adapters" / "active.json").write_text(readable_but_wrong)
        assert "active.json is damaged" in align("status"), readable_but_wrong
        assert "v0001" in align("adapters", "list")
        assert json.loads(align("rollback", "--json"))["active"] is None
        (home / "adapters" / "active.json").write_text(readable_but_wrong)
    assert adapters.active_adapter(config.root, model) is None
    # A nightly option without --nightly did nothing, silently.
    stray = subprocess.run([sys.executable, "-m", "align.cli", "--max-pairs", "5", "status"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert stray.returncode == 2 and "--max-pairs only go with --nightly" in stray.stderr
    # --nightly with a command ran the training and ignored the command (no timer made).
    both = subprocess.run([sys.executable, "-m", "align.cli", "--nightly", "schedule", "install"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert both.returncode == 2 and "--nightly is a command of its own" in both.stderr
    for seconds in ("nan", "-5"):                   # the skip could never happen
        odd = subprocess.run([sys.executable, "-m", "align.cli", "--nightly", "--skip-if-active",
                              seconds], capture_output=True, text=True, cwd=ROOT, env=env,
                             timeout=120)
        assert odd.returncode == 2 and "at least 0" in odd.stderr, odd.stderr
    # A database that cannot be read (here: the wrong key) is said, not hidden behind
    # "kept versions", and the command fails.
    from feedback_store import FeedbackStore
    FeedbackStore.open(home).close()
    (home / "glance.key").write_text("0" * 64)
    done = subprocess.run([sys.executable, "-m", "align.cli", "status"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1 and "the runs could not be read" in done.stderr
    assert "Traceback" not in done.stderr and "kept versions: v0001" in done.stdout


# --- schedule ---------------------------------------------------------------------------------
@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("GLANCE_HOME", str(tmp_path / "glance data"))
    monkeypatch.delenv("LOCALAPPDATA", raising=False)
    return home


def test_systemd_timer_is_persistent_and_runs_the_job_politely(fresh_home):
    # activate=False: never touch the real user's systemd manager from a test
    result = schedule.install(schedule.ScheduleConfig(at="02:45", kind="systemd", activate=False))
    assert not result["activated"]
    units = fresh_home / "config" / "systemd" / "user"
    timer = (units / "glance-nightly.timer").read_text()
    service = (units / "glance-nightly.service").read_text()
    assert "OnCalendar=*-*-* 02:45:00" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    assert f'ExecStart="{sys.executable}" "-m" "align.cli" "--nightly"' in service
    assert "Nice=19" in service and "IOSchedulingClass=idle" in service
    assert f'Environment="GLANCE_HOME={os.environ["GLANCE_HOME"]}"' in service
    assert result["files"] == [str(units / "glance-nightly.service"), str(units / "glance-nightly.timer")]
    status = schedule.status(schedule.ScheduleConfig(kind="systemd", activate=False))
    assert status["installed"] and status["at"] == "02:45"
    schedule.remove(schedule.ScheduleConfig(kind="systemd", activate=False))
    assert not list(units.iterdir())
    assert not schedule.status(schedule.ScheduleConfig(kind="systemd", activate=False))["installed"]


def test_the_schedule_names_the_data_folder_as_resolved_when_installed(fresh_home, monkeypatch):
    """A relative GLANCE_HOME went into the unit as typed: the job, started elsewhere,
    trained on another folder every night, out of sight."""
    monkeypatch.chdir(fresh_home)
    monkeypatch.setenv("GLANCE_HOME", "my-glance")
    schedule.install(schedule.ScheduleConfig(kind="systemd", activate=False))
    service = (fresh_home / "config" / "systemd" / "user" / "glance-nightly.service").read_text()
    assert f'Environment="GLANCE_HOME={fresh_home / "my-glance"}"' in service


def test_a_timer_systemd_cannot_start_for_want_of_a_session_says_what_to_do(fresh_home, tmp_path,
                                                                          monkeypatch):
    """Without a user session bus (a server, ssh), status said "Run `align schedule
    install` again", which fails the same way (and auto then finds neither systemd nor cron)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    installed = schedule.install(schedule.ScheduleConfig(kind="systemd"))
    assert not installed["activated"]
    said = schedule.status(schedule.ScheduleConfig(kind="systemd"))
    assert not said["will_run"] and "no user session bus" in said["message"], said
    assert "loginctl enable-linger" in said["message"] and "--kind systemd" in said["message"]
    schedule.remove(schedule.ScheduleConfig(kind="systemd"))


def test_cron_line_goes_into_the_users_crontab_and_comes_out_again(fresh_home, tmp_path, monkeypatch):
    # crontab is the system's tool: a stand-in that keeps the table in a file.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    table = tmp_path / "crontab.txt"
    table.write_text("0 1 * * * backup.sh\n")
    (bin_dir / "crontab").write_text(
        f"#!/bin/sh\nif [ \"$1\" = \"-l\" ]; then cat {table}; else cat > {table}; fi\n")
    (bin_dir / "crontab").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = schedule.install(schedule.ScheduleConfig(at="04:05", kind="cron"))
    assert result["activated"], result["message"]
    lines = table.read_text().splitlines()
    assert lines[0] == "0 1 * * * backup.sh"
    assert lines[1].startswith("5 4 * * * GLANCE_HOME=") and lines[1].endswith("# glance-nightly")
    assert "--nightly" in lines[1] and "nice -n 19" in lines[1]
    schedule.install(schedule.ScheduleConfig(at="04:05", kind="cron"))     # idempotent
    assert len(table.read_text().splitlines()) == 2
    assert schedule.status(schedule.ScheduleConfig(kind="cron"))["at"] == "04:05"
    assert schedule.status(schedule.ScheduleConfig(kind="cron"))["will_run"]
    table.write_text("0 1 * * * backup.sh\n")               # the line removed by hand
    gone = schedule.status(schedule.ScheduleConfig(kind="cron"))
    assert not gone["will_run"] and "will not run" in gone["message"], gone   # (said "scheduled")
    schedule.install(schedule.ScheduleConfig(at="04:05", kind="cron"))
    schedule.remove(schedule.ScheduleConfig(kind="cron"))
    assert table.read_text().splitlines() == ["0 1 * * * backup.sh"]


def test_launchd_plist_and_windows_task_xml(fresh_home):
    result = schedule.install(schedule.ScheduleConfig(at="03:10", kind="launchd", activate=False))
    plist = plistlib.loads(Path(result["files"][0]).read_bytes())
    assert Path(result["files"][0]) == fresh_home / "Library" / "LaunchAgents" / "org.glance.nightly.plist"
    assert plist["StartCalendarInterval"] == {"Hour": 3, "Minute": 10}
    assert plist["ProgramArguments"][1:] == ["-m", "align.cli", "--nightly", "--skip-on-battery"]
    assert plist["LowPriorityIO"] is True and plist["ProcessType"] == "Background"
    assert schedule.status(schedule.ScheduleConfig(kind="launchd"))["at"] == "03:10"

    result = schedule.install(schedule.ScheduleConfig(at="03:10", kind="windows", activate=False))
    path = Path(result["files"][0])
    assert path == fresh_home / "AppData" / "Local" / "Glance" / "glance-nightly.xml"
    xml = path.read_bytes().decode("utf-16")
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    task = ElementTree.fromstring(xml.split("?>", 1)[1])
    assert task.find("t:Triggers/t:CalendarTrigger/t:StartBoundary", ns).text.endswith("T03:10:00")
    assert task.find("t:Settings/t:StartWhenAvailable", ns).text == "true"
    assert task.find("t:Settings/t:DisallowStartIfOnBatteries", ns).text == "true"
    arguments = task.find("t:Actions/t:Exec/t:Arguments", ns).text
    assert "--nightly" in arguments and "GLANCE_HOME=" in arguments
    schedule.remove(schedule.ScheduleConfig(kind="windows", activate=False))
    assert not path.exists()


def test_a_bad_time_is_refused():
    with pytest.raises(schedule.ScheduleError):
        schedule.install(schedule.ScheduleConfig(at="25:00", kind="cron"))


def test_a_broken_settings_file_is_named_with_what_is_wrong(tmp_path):
    """training/settings.json is edited by hand: a typo gave a bare JSONDecodeError (or an
    AttributeError), and a wrong type was accepted to fail hours later in training."""
    from align.nightly import NightlyConfig, load_settings
    path = tmp_path / "training" / "settings.json"
    path.parent.mkdir(parents=True)
    for text, says in (('{"dpo": {epochs: 1}}', "is not valid JSON"),
                       ("[1, 2]", "must be an object"),
                       ('{"dpo": 3}', "must be an object"),
                       ('{"dpo": {"epochs": "lots"}}', "dpo.epochs wants a whole number, not 'lots'"),
                       ('{"dpo": {"epochs": 1.5}}', "dpo.epochs wants a whole number, not 1.5"),
                       ('{"pairs": {"include_imported": 1}}', "wants true or false, not 1"),
                       ('{"gate": {"nonsense": 1}}', "unknown gate setting 'nonsense'"),
                       # the right type, and still unusable: found hours later, or never
                       ('{"dpo": {"batch_pairs": 0}}', "dpo.batch_pairs wants a whole number "
                                                       "of at least 1, not 0"),
                       ('{"nightly": {"keep_versions": -1}}', "at least 1, not -1"),
                       ('{"pairs": {"max_pairs": 0}}', "at least 1, not 0"),
                       ('{"gate": {"max_kl_per_token": -0.1}}', "of at least 0, not -0.1"),
                       ('{"nightly": {"data_dir": "/elsewhere"}}', "cannot be set here")):
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(says)) as caught:
            load_settings(NightlyConfig(data_dir=tmp_path))
        assert str(path) in str(caught.value)
    path.write_text('{"dpo": {"epochs": 1, "target_modules": ["q_proj"], "token_budget": null,'
                    ' "beta": 1, "seed": 0}, "pairs": {"max_pairs": 5}}')
    config = load_settings(NightlyConfig(data_dir=tmp_path))
    assert (config.dpo.epochs, config.dpo.target_modules, config.pairs.max_pairs) == (1, ("q_proj",), 5)
    assert config.dpo.token_budget is None and config.dpo.beta == 1   # null where None is allowed


def test_the_schedule_status_says_what_will_not_run_and_what_runs_elsewhere(fresh_home, tmp_path,
                                                                            monkeypatch):
    """On a machine without cron, install wrote its copy and failed, then `status` said
    "scheduled" (will_run true); installed with --kind, `status` looked at the detected
    scheduler and said "not scheduled"; and nothing said when the job runs another
    Python or trains on another data folder than this Glance."""
    no_tools = tmp_path / "empty-bin"
    no_tools.mkdir()
    monkeypatch.setenv("PATH", str(no_tools))           # no crontab, no systemctl
    with pytest.raises(schedule.ScheduleError, match="cron"):
        schedule.install(schedule.ScheduleConfig(kind="cron"))
    assert not schedule.cron_copy().exists()
    assert not schedule.status(schedule.ScheduleConfig(kind="cron"))["will_run"]
    schedule.install(schedule.ScheduleConfig(kind="cron", activate=False))   # written by hand
    written = schedule.status(schedule.ScheduleConfig(kind="cron"))
    assert written["installed"] and not written["will_run"]
    assert "no crontab" in written["message"], written["message"]
    schedule.remove(schedule.ScheduleConfig(kind="cron", activate=False))
    # A data folder whose name holds a ' is quoted in cron's line: still this folder.
    data_folder = os.environ["GLANCE_HOME"]
    monkeypatch.setenv("GLANCE_HOME", str(tmp_path / "Ann's data"))
    schedule.install(schedule.ScheduleConfig(kind="cron", activate=False))
    assert schedule.status(schedule.ScheduleConfig(kind="cron"))["runs_elsewhere"] == []
    schedule.remove(schedule.ScheduleConfig(kind="cron", activate=False))
    monkeypatch.setenv("GLANCE_HOME", data_folder)

    schedule.install(schedule.ScheduleConfig(at="02:10", kind="systemd", activate=False))
    found = schedule.status(schedule.ScheduleConfig(activate=False))          # --kind auto
    assert found["kind"] == "systemd" and found["installed"] and found["at"] == "02:10"
    assert found["runs_elsewhere"] == []
    monkeypatch.setenv("GLANCE_HOME", str(tmp_path / "another folder"))
    moved = schedule.status(schedule.ScheduleConfig(activate=False, python="/elsewhere/python"))
    assert len(moved["runs_elsewhere"]) == 2, moved
    assert "another data folder" in moved["message"] and "another Python" in moved["message"]
    schedule.remove(schedule.ScheduleConfig(activate=False))                 # the installed one
    assert not (fresh_home / "config" / "systemd" / "user" / "glance-nightly.timer").exists()


def test_an_install_that_could_not_activate_exits_non_zero(fresh_home, tmp_path):
    """It printed that it wrote the files but could not activate them, and exited 0: a
    script or a user reading the code took the schedule as set."""
    no_tools = tmp_path / "empty-bin"      # no launchctl (nor anything else) to activate with
    no_tools.mkdir()
    done = subprocess.run([sys.executable, "-m", "align.cli", "schedule", "install", "--kind",
                           "launchd", "--json"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=dict(os.environ, PATH=str(no_tools)))
    assert done.returncode == 1, done.stdout + done.stderr
    assert json.loads(done.stdout)["activated"] is False


def test_a_rollback_steps_back_one_models_line_and_leaves_the_others_alone(tmp_path, model):
    """One active version served every model: with v1 (this model), v2 (another) and v3
    (this model) active, the other model's chats used v2; rollback stepped this model's
    line back to v1 and the other model's chats silently lost v2. Each model has its own
    version in use now; ``--model`` picks the line."""
    other = other_model(tmp_path)
    home = tmp_path / "home"
    config = adapters.AdapterConfig(adapters.adapters_dir(home))
    publish(config, tmp_path, model, 1)
    publish_for(config, tmp_path, other)
    publish(config, tmp_path, model, 3)
    assert adapters.in_use(config.root) == {"base.gguf": "v0003", "other.gguf": "v0002"}

    def align(*args, code=0):
        return align_in(home, *args, code=code)
    assert json.loads(align("rollback", "--json").stdout) == {"active": "v0001", "model": "base.gguf"}
    assert adapters.in_use(config.root) == {"base.gguf": "v0001", "other.gguf": "v0002"}
    assert adapters.active_adapter(config.root, other)["version"] == "v0002"
    assert align("rollback", "--model", "other.gguf").stdout == \
        "Now using the base model (no adapter) for other.gguf.\n"
    assert adapters.in_use(config.root) == {"base.gguf": "v0001", "other.gguf": None}
    assert json.loads(align("status", "--json").stdout)["in_use"] == adapters.in_use(config.root)
    listed = {v["version"]: v["active"] for v in adapters.list_versions(config.root)}
    assert listed == {"v0001": True, "v0002": False, "v0003": False}
    missing = align("rollback", "--model", "nowhere.gguf", code=2)
    assert "nowhere.gguf" in missing.stderr and "base.gguf, other.gguf" in missing.stderr
    # A rollback is undone by choosing the version again (nothing could: the next night,
    # with nothing new to learn, publishes nothing, and v0003 stayed unused for good).
    assert align("adapters", "use", "v0003").stdout == "Now using v0003 for base.gguf.\n"
    assert json.loads(align("adapters", "use", "v0002", "--json").stdout) == \
        {"active": "v0002", "model": "other.gguf"}
    assert adapters.in_use(config.root) == {"base.gguf": "v0003", "other.gguf": "v0002"}
    assert align("adapters", "use", "base", "--model", "other.gguf").stdout == \
        "Now using the base model (no adapter) for other.gguf.\n"
    assert adapters.in_use(config.root) == {"base.gguf": "v0003", "other.gguf": None}
    for args, says in ((["v0009"], "No adapter version 'v0009'"),
                       (["v0002", "--model", "base.gguf"], "v0002 was trained on other.gguf"),
                       (["base", "--model", "nowhere.gguf"], "nowhere.gguf")):
        refused = align("adapters", "use", *args, code=2)
        assert says in refused.stderr, refused.stderr
    assert adapters.in_use(config.root) == {"base.gguf": "v0003", "other.gguf": None}
    align("adapters", "use", "v0001")
    # A publish for one model leaves the other's choice (its base) as it is.
    publish(config, tmp_path, model, 4)
    assert adapters.in_use(config.root) == {"base.gguf": "v0004", "other.gguf": None}


def test_adapter_commands_in_a_data_folder_never_used_make_nothing(tmp_path):
    """`align rollback` in a data folder Glance was never used with made an adapters
    folder (its lock file) to say there was nothing to roll back."""
    home = tmp_path / "home"
    for args in (["rollback"], ["adapters", "use", "base"], ["adapters", "list"], ["status"]):
        said = align_in(home, *args)
        assert "base model" in said.stdout or "never" in said.stdout, (args, said.stdout)
        assert not (home / "adapters").exists(), args
    missing = align_in(home, "rollback", "--model", "nowhere.gguf", code=2)   # as with adapters
    assert "nowhere.gguf" in missing.stderr and not (home / "adapters").exists()


def test_an_active_file_from_before_the_per_model_map_is_read_as_it_was(tmp_path, model):
    """A file with one version for all models: each model uses its newest version up to
    it; the first write records every model's version, so nothing changes for them."""
    other = other_model(tmp_path)
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)
    publish_for(config, tmp_path, other)
    publish(config, tmp_path, model, 3)
    (config.root / "active.json").write_text(json.dumps({"version": "v0002", "counter": 3}))
    assert adapters.in_use(config.root) == {"base.gguf": "v0001", "other.gguf": "v0002"}
    assert adapters.active_adapter(config.root, model)["version"] == "v0001"
    assert adapters.rollback(config) is None                   # v0002's line: other.gguf
    assert adapters.in_use(config.root) == {"base.gguf": "v0001", "other.gguf": None}
    models = json.loads((config.root / "active.json").read_text())["models"]
    assert {key.split("#")[0]: version for key, version in models.items()} == \
        {"base.gguf": "v0001", "other.gguf": None}

def test_two_models_of_one_file_name_keep_their_own_versions(tmp_path, model):
    """Two different models both called base.gguf (llama.cpp's default names repeat):
    keyed by name alone, A's rollback wrote over B's choice and B's chats lost v2."""
    other = tmp_path / "elsewhere" / model.name
    other.parent.mkdir()
    other.write_bytes(b"GGUF" + b"\2" * 60)                  # same name and size, other weights
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)
    theirs = adapters.publish(config, fake_adapter(tmp_path, "b.gguf", b"B's adapter"), None,
                              {"base": adapters.base_identity(other), "pairs": {"train": 1}})
    publish(config, tmp_path, model, 3)
    assert adapters.rollback(config) == "v0001"              # A's line (published last)
    assert adapters.active_adapter(config.root, other)["version"] == theirs
    assert adapters.active_adapter(config.root, model)["version"] == "v0001"
    assert sorted(adapters.in_use(config.root).values()) == ["v0001", "v0002"]
    listed = {v["version"]: v["active"] for v in adapters.list_versions(config.root)}
    assert listed == {"v0001": True, "v0002": True, "v0003": False}
    # B's line, named as status names it (the file name alone picks one of the two; the
    # rollback hint printed this name, and it was refused)
    (label,) = [label for label, version in adapters.in_use(config.root).items() if version == theirs]
    assert label.startswith(f"{model.name} (")
    assert adapters.rollback(config, label) is None
    assert adapters.active_adapter(config.root, other) is None
    assert adapters.active_adapter(config.root, model)["version"] == "v0001"


def test_retiring_or_pruning_one_models_versions_leaves_the_others_alone(tmp_path, model):
    """A retirement in one model's line, and the pruning of old versions after a run of
    publishes for one model, keep another model's version in use."""
    other = other_model(tmp_path)
    config = adapters.AdapterConfig(tmp_path / "adapters", keep=3)
    mine = [publish(config, tmp_path, model, n) for n in (1, 2)]
    theirs = publish_for(config, tmp_path, other)                   # v0003, other's
    adapters.retire(config, mine[-1])                               # this model: back to v0001
    assert adapters.in_use(config.root) == {"base.gguf": mine[0], "other.gguf": theirs}
    for n in range(4, 9):                                            # five more for this model
        publish(config, tmp_path, model, n)
    assert theirs in adapters.versions(config.root)                 # older than 3 kept, in use
    assert adapters.in_use(config.root) == {"base.gguf": "v0008", "other.gguf": theirs}


@pytest.mark.parametrize("lost", ["deleted", "damaged"])
def test_a_publish_after_active_json_was_lost_gives_every_model_its_newest_version(tmp_path, model, lost):
    """A missing or damaged active.json leaves every model on its base until the next
    publish; that publish gave the other models back their newest versions before the
    per-model map, and must still (not write "base" for them into the map)."""
    other = other_model(tmp_path)
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish_for(config, tmp_path, other)
    publish(config, tmp_path, model, 2)
    if lost == "deleted":
        (config.root / "active.json").unlink()
    else:
        (config.root / "active.json").write_text("{damaged")
    assert adapters.active_adapter(config.root, other) is None          # meanwhile: the base
    # A retirement meanwhile (a deleted conversation) keeps them there: it gave every
    # model its newest version, as only a publish does.
    doomed = publish(config, tmp_path, model, 3)
    (config.root / "active.json").unlink() if lost == "deleted" else \
        (config.root / "active.json").write_text("{damaged")
    adapters.retire(config, doomed)
    assert adapters.in_use(config.root) == {"base.gguf": None, "other.gguf": None}
    publish(config, tmp_path, model, 4)      # a new number: v0003 names the retired one
    assert adapters.in_use(config.root) == {"base.gguf": "v0004", "other.gguf": "v0001"}


def test_status_and_rollback_speak_of_each_model(tmp_path, model):
    """With a model rolled back to its base, "active adapter: none" was printed while
    another model still answered with its version, and a plain rollback said nothing was
    active; with several models and no line to follow it now asks which one."""
    other = other_model(tmp_path)
    home = tmp_path / "home"
    config = adapters.AdapterConfig(adapters.adapters_dir(home))
    publish(config, tmp_path, model, 1)
    publish_for(config, tmp_path, other)

    def align(*args, code=0):
        return align_in(home, *args, code=code)
    assert align("rollback", "--model", str(other)).stdout == \
        "Now using the base model (no adapter) for other.gguf.\n"       # a path works too
    status = align("status").stdout
    assert "adapter for base.gguf: v0001" in status and "adapter for other.gguf: none" in status
    said = align("rollback").stdout                                    # other.gguf's line again
    assert "already answers with the base model" in said
    assert "base.gguf answers with v0001: align rollback --model base.gguf." in said
    state = json.loads((config.root / "active.json").read_text())
    (config.root / "active.json").write_text(json.dumps({k: v for k, v in state.items()
                                                         if k != "line"} | {"version": None}))
    asked = align("rollback", code=2)
    assert "Several models have adapters: say which with --model" in asked.stderr
    assert "base.gguf, other.gguf" in asked.stderr


def test_a_change_of_active_json_waits_for_the_one_under_way(tmp_path, model, monkeypatch):
    """The nightly job, the app and align rollback each read, change and write
    active.json: one's write undid another's (a retirement read before a publish and
    written after it took the new version away). Each reads only once it holds the lock:
    a change made while it waited is what it acts on."""
    import threading

    from feedback_store import locks
    config = adapters.AdapterConfig(tmp_path / "adapters")
    for n in (1, 2, 3):
        publish(config, tmp_path, model, n)
    real_lock, asked = locks.lock_file, threading.Event()

    def lock_file(handle, blocking):
        if threading.current_thread() is not threading.main_thread():
            asked.set()                       # the change under test asks for the lock
        return real_lock(handle, blocking)
    monkeypatch.setattr(locks, "lock_file", lock_file)

    def while_another_holds_it(change, write_meanwhile):
        with open(config.root / ".active.lock", "a+") as held:
            real_lock(held, blocking=True)
            asked.clear()
            worker = threading.Thread(target=change)
            worker.start()
            try:
                assert asked.wait(30)
                adapters._held.depth = 1      # (this thread holds the lock: as the other
                try:                          # process, it changes the file under it)
                    write_meanwhile()
                finally:
                    adapters._held.depth = 0
            finally:
                locks.unlock_file(held)
                worker.join(30)
        assert not worker.is_alive()
    # Another process rolled v0003 back to v0002 meanwhile: this rollback goes on to v0001.
    while_another_holds_it(lambda: adapters.rollback(config),
                           lambda: adapters._activate(config.root, "v0002", adapters._model_of(config.root, "v0002")))
    assert adapters.active_adapter(config.root, model)["version"] == "v0001"
    # A version published meanwhile (v0004) survives the retirement of the one in use
    # when the retirement began (read before the publish, it put the model on its base).
    while_another_holds_it(lambda: adapters.retire(config, "v0001"),
                           lambda: publish(config, tmp_path, model, 4))
    assert adapters.active_adapter(config.root, model)["version"] == "v0004"


def test_a_retirement_as_a_version_is_put_in_place_waits_for_its_activation(tmp_path, model,
                                                                             monkeypatch):
    """The new version's folder was put in place, then the lock was taken to activate it:
    a retirement in between (the app: a conversation it learned from deleted) removed the
    folder, and active.json was then made to name it; the job said "Published"."""
    import threading

    from feedback_store import locks
    config = adapters.AdapterConfig(tmp_path / "adapters")
    publish(config, tmp_path, model, 1)
    real_lock, real_fsync = locks.lock_file, adapters._fsync_dir
    asked, retiring = threading.Event(), []

    def lock_file(handle, blocking):
        if threading.current_thread() is not threading.main_thread():
            asked.set()
        return real_lock(handle, blocking)

    def fsync_dir(path):
        real_fsync(path)
        if (Path(path) / "v0002").is_dir() and not retiring:     # just put in place
            retiring.append(threading.Thread(target=adapters.retire, args=(config, "v0002")))
            retiring[0].start()
            assert asked.wait(30)
            retiring[0].join(1.0)       # done at once, unless it waits for the activation
    monkeypatch.setattr(locks, "lock_file", lock_file)
    monkeypatch.setattr(adapters, "_fsync_dir", fsync_dir)
    publish(config, tmp_path, model, 2)
    retiring[0].join(30)
    state = adapters.read_active(config.root)
    kept = adapters.versions(config.root)
    assert kept == ["v0001"]
    assert state["version"] in (None, *kept) and set(state["models"].values()) <= {None, *kept}
    assert adapters.active_adapter(config.root, model)["version"] == "v0001"
