"""The whole nightly run: rows → pairs → DPO → GGUF adapter → gate → publish → record.

    result = run_nightly(NightlyConfig(data_dir=glance_home()))

Where the rows come from depends on who has the database (DuckDB allows one process):
- **the app is open**: it serves ``<data dir>/nightly.sock``; the job asks it for an
  encrypted snapshot of the consented rows and, at the end, hands it the outcome to
  record. The job never opens the database.
- **the app is closed**: the job opens the store itself, twice and briefly — to read the
  rows and mark the run started (about a second), and to record the outcome. Training
  (minutes) happens with the database closed.
- **the app starts while the job holds it**: the app waits with a message
  (``app.training_link.open_store_waiting``); the job, finding the database taken when it
  wants to record, finds the app's socket and records through it. Every step retries
  until ``wait_for_store_s``, so no outcome is lost and no lock error reaches anyone.

Every run is recorded in the store (``training_runs``), whatever its outcome. Nothing new
to learn (no pairs, or the same pairs as the last run) ends with status ``nothing_new``
and exit code 0.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import adapters as adapter_files
from .gate import GateConfig, split_by_conversation
from .ipc import AppClient, LinkClosed
from .pairs import PairConfig, build_pairs, fingerprint
from .scoring import score_judge

WORK = Path("training") / "work"


@dataclass
class NightlyConfig:
    data_dir: Path
    include_imported: bool = False
    max_pairs: int | None = None
    skip_on_battery: bool = False
    skip_if_active_s: float | None = None   # skip when the app saw the user this recently
    lower_priority: bool = True
    wait_for_store_s: float = 600.0
    keep_versions: int = 5
    checkpoint_cache: Path | None = None    # default <data dir>/cache/hf (GLANCE_CHECKPOINT_CACHE)
    pairs: PairConfig = field(default_factory=PairConfig)
    dpo: "object" = None                    # DPOSettings (default when None)
    gate: GateConfig = field(default_factory=GateConfig)


SETTINGS_FILE = Path("training") / "settings.json"


def load_settings(config: NightlyConfig) -> NightlyConfig:
    """Optional overrides in ``<data dir>/training/settings.json``: {"dpo": {...DPOSettings},
    "gate": {...GateConfig}, "pairs": {...PairConfig}, "nightly": {...NightlyConfig}}."""
    from .dpo import DPOSettings
    path = Path(config.data_dir) / SETTINGS_FILE
    try:
        overrides = json.loads(path.read_text()) if path.exists() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it") from None
    sections = ("dpo", "gate", "pairs", "nightly")
    if not isinstance(overrides, dict) or not all(
            isinstance(overrides.get(name) or {}, dict) for name in sections):
        raise ValueError(f"{path} must be an object like {{\"dpo\": {{\"epochs\": 1}}}}, with "
                         f"the sections {', '.join(sections)}")
    dpo = config.dpo or DPOSettings()
    for name, target in zip(sections, (dpo, config.gate, config.pairs, config)):
        for key, value in (overrides.get(name) or {}).items():
            if not hasattr(target, key):
                raise ValueError(f"{path}: unknown {name} setting {key!r}")
            current = getattr(target, key)
            if not _fits(target, key, value):
                raise ValueError(f"{path}: {name}.{key} wants {_kind(target, key)}, not {value!r}")
            wrong = _out_of_range(name, key, value)
            if wrong:
                raise ValueError(f"{path}: {name}.{key} {wrong}, not {value!r}")
            setattr(target, key, tuple(value) if isinstance(current, tuple) else value)
    config.dpo = dpo
    return config


# Whole numbers that may be 0 (the rest count things: 0 divided by zero, or kept nothing).
_MAY_BE_ZERO = {"seed"}
_NOT_SETTABLE = {("nightly", "data_dir"): "cannot be set here (this file belongs to its folder)"}


def _out_of_range(section: str, key: str, value) -> str | None:
    """Why a value of the right type still cannot be used (None: it can). Found late, a
    batch of 0 pairs failed after the conversion with ZeroDivisionError, and keep_versions
    -1 deleted every version that could be rolled back to."""
    import math
    if (section, key) in _NOT_SETTABLE:
        return _NOT_SETTABLE[section, key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return "wants a finite number"
    if isinstance(value, int) and key not in _MAY_BE_ZERO and value < 1:
        return "wants a whole number of at least 1"
    if value < 0:
        return "wants a number of at least 0"
    return None


# A settings.json value for each declared type (``int | None`` ...), and its words.
_JSON_TYPES = {"bool": ((bool,), "true or false"), "int": ((int,), "a whole number"),
               "float": ((int, float), "a number"), "str": ((str,), "text"),
               "Path": ((str,), "a path"), "tuple": ((list,), "a list"),
               "None": ((type(None),), "null")}


def _declared(target, key: str) -> list[str]:
    import dataclasses
    declared = {f.name: str(f.type) for f in dataclasses.fields(target)}.get(key, "")
    return [name.strip() for name in declared.split("|") if name.strip() in _JSON_TYPES]


def _kind(target, key: str) -> str:
    """What a setting takes, in words, from its declared type."""
    return " or ".join(_JSON_TYPES[name][1] for name in _declared(target, key)) or "nothing"


def _fits(target, key: str, value) -> bool:
    """A setting keeps its declared type: a whole number for an int, true/false for a
    switch, a list for a tuple, null only where None is allowed (JSON's true is not a
    number here, though Python's bool is an int)."""
    for name in _declared(target, key):
        types = _JSON_TYPES[name][0]
        if isinstance(value, types) and (name == "bool" or not isinstance(value, bool)):
            return True
    return False


def _while_holding_store(stage: str) -> None:
    """Test seam: tests replace it to keep the job inside the store."""


def _before_recording() -> None:
    """Test seam: tests replace it to let an app start before the outcome is recorded."""


# --- where the rows come from and where the outcome goes --------------------------------------
class DataDeleted(RuntimeError):
    """The user deleted everything while the job ran: nothing may be recorded, published
    or left behind (opening the store would create a new database in the wiped folder)."""


class NoData(Exception):
    """No database in the folder: opening one would make it (and a key)."""

    def __init__(self, data_dir):
        super().__init__(f"No Glance data in {data_dir} (Glance was not used there yet, or "
                         "everything was deleted): nothing to train on.")


def check_not_deleted(data_dir: Path) -> None:
    if not (Path(data_dir) / "glance.db").exists():
        raise DataDeleted("Glance's data was deleted while the nightly training ran: "
                          "nothing was recorded or published, and its work was removed.")


class _Direct:
    """The app is closed: open the store for a moment, each time."""
    via = "direct"

    def __init__(self, data_dir: Path, log):
        self.data_dir, self.log = data_dir, log

    def _open(self):
        from feedback_store import FeedbackStore, NoGlanceData
        try:
            # Opening would make a new database and key: after *Delete everything* the
            # scheduled job or `align status` brought Glance's files back each night.
            return FeedbackStore.open_existing(self.data_dir)
        except NoGlanceData:
            raise NoData(self.data_dir) from None

    def begin(self, run_id: str, include_imported: bool) -> dict:
        from app.models import choose_model
        store = self._open()
        try:
            _while_holding_store("begin")
            retired = adapter_files.retire_stale(store, adapter_files.adapters_dir(self.data_dir))
            rows = store.training.rows(include_imported=include_imported)
            model = choose_model(store)
            last = store.training.last_fingerprint()
            store.training.begin_run(run_id, "direct", Path(model).name)
        finally:
            store.close()
        return {"rows": rows, "model": model, "last_fingerprint": last, "retired": retired}

    def finish(self, run_id: str, outcome: dict) -> None:
        store = self._open()
        try:
            _while_holding_store("finish")
            store.training.finish_run(run_id, outcome)
            adapter_files.retire_stale(store, adapter_files.adapters_dir(self.data_dir))
        finally:
            store.close()

    def before_publishing(self, ids) -> dict:
        """Which of these conversations still exist, and whether personalisation is still
        allowed (either may have changed while the job trained)."""
        store = self._open()
        try:
            return {"ids": store.training.existing_conversations(ids),
                    "personalise": store.consent.is_on("personalise")}
        finally:
            store.close()


class _App:
    """The app is open: ask it over the socket."""
    via = "app"

    def __init__(self, client: AppClient):
        self.client = client

    def begin(self, run_id: str, include_imported: bool) -> dict:
        from feedback_store.training import read_snapshot
        answer = self.client.request("snapshot", run_id=run_id, include_imported=include_imported)
        path = Path(answer["path"])
        try:
            rows = read_snapshot(path, answer["key"])
        finally:
            path.unlink(missing_ok=True)
        return {"rows": rows, "model": answer["model"], "last_fingerprint": answer["last_fingerprint"],
                "retired": answer.get("retired") or [], "idle_s": self.client.hello.get("idle_s")}

    def finish(self, run_id: str, outcome: dict) -> None:
        self.client.request("finish", run_id=run_id, outcome=outcome)

    def before_publishing(self, ids) -> dict:
        answer = self.client.request("existing", ids=list(ids))
        return {"ids": set(answer["ids"]), "personalise": answer.get("personalise", True)}


def _with_store(data_dir: Path, action, wait_s: float, log):
    """Run ``action(source)`` on whichever side has the database: the app if it
    answers, else the store opened directly; retry while neither is possible."""
    from feedback_store import DatabaseLocked
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        client = AppClient.find(data_dir)
        try:
            if client is not None:
                return action(_App(client))
            return action(_Direct(data_dir, log))
        except (DatabaseLocked, ConnectionError, FileNotFoundError, TimeoutError) as error:
            if time.monotonic() > deadline:
                raise
            if not told:
                # The error's first sentence says who holds it; the rest ("close it and
                # try again") is advice to a person, while here the job waits by itself.
                held = str(error).split(". ")[0].rstrip(".")
                log(f"Waiting for the database ({held}); trying again every second for up to "
                    f"{max(0, deadline - time.monotonic()):.0f} s…")
                told = True
            time.sleep(1.0)


# --- the run -------------------------------------------------------------------------------------
def run_nightly(config: NightlyConfig, log=None) -> dict:
    from .dpo import lower_priority, on_battery
    from .locks import LOCK_FILE, AlreadyRunning, TrainingLock
    from feedback_store.training import new_run_id

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    data_dir = Path(config.data_dir)
    started, clock = time.time_ns(), time.perf_counter()
    result = {"run_id": new_run_id(), "status": None, "pairs": {}, "trained": False,
              "adapter": None, "published": False, "eval": None, "seconds": 0.0, "timings": {}}
    if not (data_dir / "glance.db").exists() and AppClient.find(data_dir) is None:
        # Nothing to read, and nothing made here (not even the lock's folder).
        return dict(result, status="skipped", recorded=False, seconds=0.0,
                    message=str(NoData(data_dir)))
    try:
        lock = TrainingLock(data_dir / LOCK_FILE).acquire()
    except AlreadyRunning as error:
        return dict(result, status="skipped", message=str(error), seconds=0.0, recorded=False)
    try:
        try:
            config = load_settings(config)
            if config.lower_priority:
                result["priority"] = lower_priority()
            if config.skip_on_battery and on_battery():
                return _record(config, result, started, clock, log, status="skipped",
                               message="On battery: the nightly training waits for mains power.")
            return _run(config, config.dpo, result, started, clock, log)
        except DataDeleted as error:
            # What the job wrote after the wipe: checkpoints learnt from deleted chats,
            # adapter state, and the converted base model it may have written there again
            # (GBs; the user's wish was that nothing of it stays).
            for folder in (WORK.parent, Path("adapters"), Path("cache") / "hf"):
                shutil.rmtree(data_dir / folder, ignore_errors=True)
            return dict(result, status="cancelled", message=str(error), recorded=False,
                        published=False, adapter=None)
        except Exception as error:  # noqa: BLE001 - every run is recorded, failures too
            message = f"The nightly training failed: {type(error).__name__}: {error}"
            try:
                return _record(config, result, started, clock, log, status="failed",
                               message=message)
            except Exception as again:  # noqa: BLE001
                return dict(result, status="failed", message=f"{message} (not recorded: {again})",
                            recorded=False)
    finally:
        lock.release()


def _step(result, name, clock_at):
    result["timings"][name] = round(time.perf_counter() - clock_at, 2)
    return time.perf_counter()


def _run(config: NightlyConfig, dpo, result: dict, started: int, clock: float, log) -> dict:
    data_dir = Path(config.data_dir)
    run_id = result["run_id"]
    at = time.perf_counter()
    source = _with_store(data_dir, lambda s: dict(s.begin(run_id, config.include_imported), via=s.via),
                         config.wait_for_store_s, log)
    result["via"] = source["via"]
    result["began"] = True                  # the database exists from here on
    result["retired"] = source["retired"]
    at = _step(result, "read", at)
    if config.skip_if_active_s is not None and source["via"] == "app":
        idle = source.get("idle_s")
        if idle is not None and idle < config.skip_if_active_s:
            return _record(config, result, started, clock, log, status="skipped",
                           message=f"You used Glance {idle:.0f} s ago; training waits until you are away.")
    rows = source["rows"]
    if not rows.get("consent_on"):
        return _record(config, result, started, clock, log, status="skipped",
                       message="Personalisation is off (glance consent set personalise on).")
    result["reward_models"] = _refresh_reward_models(data_dir)
    at = _step(result, "reward_models", at)
    # The command line's --include-imported / --max-pairs, when given, over settings.json's.
    pair_config = PairConfig(**{**config.pairs.__dict__,
                                "include_imported": config.include_imported or config.pairs.include_imported,
                                "max_pairs": config.max_pairs if config.max_pairs is not None
                                else config.pairs.max_pairs})
    pairs, report = build_pairs(rows, pair_config, judge=score_judge(rows))
    result["pairs"] = report.by_source
    result["pair_report"] = report.to_dict()
    stamp = run_fingerprint(pairs, source["model"], config)
    result["fingerprint"] = stamp
    at = _step(result, "pairs", at)
    if not pairs:
        return _record(config, result, started, clock, log, status="nothing_new",
                       message="Nothing to learn yet: no reply has been preferred over another "
                               "(pick, thumbs on two replies to one prompt, or a regenerated reply)."
                               + _given_while_off(rows))
    if len({p.conversation_id for p in pairs}) < 2:
        # The gate checks an adapter on conversations it was not trained on: with one,
        # either nothing is left to train on or nothing to check with, and minutes of
        # training would end in a refusal.
        return _record(config, result, started, clock, log, status="nothing_new",
                       message=f"Not enough to learn from yet: all {len(pairs)} pairs come "
                               "from one conversation, and a whole conversation is kept aside "
                               "to check the adapter before it is used. A pick, thumbs or "
                               "regenerated reply in a second conversation is needed.")
    if stamp == source["last_fingerprint"]:
        return _record(config, result, started, clock, log, status="nothing_new",
                       message=f"Nothing new to learn: the same {len(pairs)} pairs as last time.")

    model_path = Path(source["model"])
    unsupported = _not_exportable(model_path)
    if unsupported:
        return _record(config, result, started, clock, log, status="skipped", message=unsupported)
    train, heldout = split_by_conversation(pairs, config.gate)   # both sides non-empty
    result["split"] = {"train": len(train), "heldout": len(heldout)}
    outcome = _train_and_gate(config, dpo, result, train, heldout, pairs, model_path, at, log)

    # Was a conversation it learned from deleted while it trained?
    needed = {p.conversation_id for p in pairs if p.source != "imported"}
    check_not_deleted(data_dir)
    # And was personalisation turned off meanwhile?
    now = _with_store(data_dir, lambda s: s.before_publishing(needed), config.wait_for_store_s, log)
    gone = needed - now["ids"]
    if gone and outcome["publish"]:
        outcome["publish"] = False
        outcome["reasons"].append(f"{len(gone)} conversation(s) it learned from were deleted meanwhile")
    if not now["personalise"] and outcome["publish"]:
        outcome["publish"] = False
        outcome["reasons"].append("personalisation was turned off while it trained")
        # Not a judgement of these pairs: once it is on again, the same pairs are worth a
        # run (recorded with the run's fingerprint, every later night said "nothing new").
        result["fingerprint"] = None
    return _publish_and_record(config, result, outcome, train, heldout, model_path, gone,
                               started, clock, log)


# How a run goes, not what it learns or accepts: left out of the run's fingerprint.
_OPERATIONAL = {"progress", "threads", "device", "checkpoints", "trunk_cache_mb", "split_trunk",
                "batch_pairs"}


def run_fingerprint(pairs, model: str | None, config: NightlyConfig) -> str:
    """What a run would learn: the pairs, the base model and the settings that shape the
    adapter or its gate. The same pairs for another base model (the user switched models)
    or other settings are something new to learn: an adapter fits one base model only."""
    from .adapters import base_identity
    from .dpo import DPOSettings
    try:
        base = base_identity(model)          # as the adapter's manifest names its base
    except (OSError, TypeError):
        base = {"name": Path(model or "").name}
    return fingerprint(pairs, context=json.dumps(
        {"model": base, "dpo": _plain(config.dpo or DPOSettings()),
         "gate": _plain(config.gate)}, sort_keys=True, default=str))


def _plain(settings) -> dict:
    """What a settings dataclass sets about the adapter learnt or accepted, as plain
    values, for the run's fingerprint."""
    import dataclasses
    if not dataclasses.is_dataclass(settings):
        return {}
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in _OPERATIONAL}


def labels_from_app(client: AppClient) -> tuple[dict, bool]:
    """The user's labelled rows for the reward models (``train.live_tables``), computed by
    the open app: they need reading traces, which the snapshot does not carry; and
    whether personalisation is on there."""
    from .examples import Table
    answer = client.request("reward_labels")
    return ({task: Table.from_json(answer[task]) for task in ("pairwise", "pointwise")},
            answer.get("consent_on", True))


def _refresh_reward_models(data_dir: Path) -> dict:
    """Retrain the reward models on new picks and thumbs (``align.train.refresh``), with
    the labels from the app when it is open; never a reason for the run to fail."""
    from feedback_store import DatabaseLocked
    from .train import refresh
    try:
        client = AppClient.find(data_dir)
        return refresh(data_dir, labels_from_app(client)[0] if client is not None else None)
    except (DatabaseLocked, LinkClosed):
        return {"status": "skipped", "reason": "Glance was opened or closed meanwhile; "
                                               "the next night will do it"}
    except Exception as error:  # noqa: BLE001 - the adapter's training does not depend on it
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}


def _given_while_off(rows: dict) -> str:
    """The labels the job may not use because they were given with personalisation off
    (the usual path: consents start off): without this, "nothing to learn" read as "you
    never preferred anything"."""
    counts = {row["kind"]: row["labels"] for row in rows.get("feedback_while_off", [])}
    if not counts:
        return ""
    said = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counts.items()))
    return (f" ({said} given while personalisation was off are not used; what you give "
            "from now on is.)")


def _not_exportable(model_path: Path) -> str | None:
    """Why no adapter can be made for this model (None: one can). Read from its GGUF
    header in milliseconds: found at export, it cost a whole night's training, every night."""
    from app.models import ModelError, inspect_model
    from .export_gguf import EXPORTABLE
    try:
        architecture = inspect_model(model_path)["architecture"]
    except ModelError as error:
        return f"The chat model cannot be trained on: {error}"
    if architecture in EXPORTABLE:
        return None
    return (f"Personal adapters cannot be made for {model_path.name} yet: its architecture "
            f"({architecture}) is not one Glance can export ({', '.join(sorted(EXPORTABLE))}). "
            "The chat keeps using the model as it is.")


def _train_and_gate(config, dpo, result, train, heldout, pairs, model_path, at, log) -> dict:
    from .checkpoint import CheckpointConfig, ensure_checkpoint
    from .dpo import load_scorer, train_dpo
    from .export_gguf import export_adapter
    from .gate import evaluate

    data_dir = Path(config.data_dir)
    cache = config.checkpoint_cache or os.environ.get("GLANCE_CHECKPOINT_CACHE") \
        or data_dir / "cache" / "hf"
    checkpoint = ensure_checkpoint(model_path, CheckpointConfig(cache_dir=Path(cache)), log=log)
    at = _step(result, "checkpoint", at)
    work = work_folder(data_dir, pairs, config.gate, model_path, dpo)
    for other in (data_dir / WORK).glob("*") if (data_dir / WORK).is_dir() else []:
        if other != work:
            shutil.rmtree(other, ignore_errors=True)      # another pair set: cannot resume it
    # The user's conversations only: the app removes state that learned from one deleted
    # since, and the study's imported ids are never in the conversations table (noted, they
    # made every interrupted run with --include-imported start over at the next app start).
    adapter_files.note_learned_from(work, {p.conversation_id for p in pairs if p.source != "imported"})
    log(f"Training on {len(train)} pairs ({len(heldout)} held out)…")
    trained = train_dpo(train, checkpoint, work, dpo, log=log)
    result["trained"] = True
    result["train"] = {k: v for k, v in trained.to_dict().items() if k != "metrics"}
    at = _step(result, "train", at)
    gguf = work / "adapter.gguf"
    export_adapter(trained.adapter_dir, gguf, checkpoint,
                   metadata={"base": model_path.name, "run": result["run_id"]})
    at = _step(result, "export", at)
    log("Checking the adapter on held-out conversations…")
    scorer, tokenizer = load_scorer(checkpoint, trained.adapter_dir, dpo)
    prompts = _sample_prompts(heldout, train, config.gate.samples)
    report = evaluate(scorer, tokenizer, heldout, model_path, gguf, prompts, dpo, config.gate)
    # Which prompts the drift samples answered: held-out ones first, training ones to make
    # up the number (drift is then measured where the adapter learned, a stricter test).
    from_heldout = min(len({pair.prompt_id for pair in heldout}), len(prompts))
    report["drift"].update(prompts_heldout=from_heldout, prompts_train=len(prompts) - from_heldout)
    del scorer
    result["eval"] = report
    _step(result, "gate", at)
    return {"publish": report["publish"], "reasons": list(report["reasons"]), "work": work,
            "gguf": gguf, "peft": trained.adapter_dir, "report": report}


def _sample_prompts(heldout, train, count: int) -> list:
    seen, prompts = set(), []
    for pair in list(heldout) + list(train):
        if pair.prompt_id not in seen:
            seen.add(pair.prompt_id)
            prompts.append(pair.prompt)
        if len(prompts) >= count:
            break
    return prompts


def _publish_and_record(config, result, outcome, train, heldout, model_path, gone,
                        started, clock, log) -> dict:
    data_dir = Path(config.data_dir)
    conversations = len({p.conversation_id for p in train})
    adapter_config = adapter_files.AdapterConfig(adapter_files.adapters_dir(data_dir),
                                                 keep=config.keep_versions)
    summary = _gate_summary(outcome["report"])
    splits = [(p, "train") for p in train] + [(p, "heldout") for p in heldout]
    pairs_used = [{"conversation_id": p.conversation_id, "prompt_message_id": p.prompt_id,
                   "chosen_message_id": p.chosen_id, "rejected_message_id": p.rejected_id,
                   "source": p.source, "epsilon": p.epsilon, "split": split}
                  for p, split in splits if p.conversation_id not in gone]
    if outcome["publish"]:
        recorded = {}

        def record(version):     # before the version is in use: see adapters.publish
            result.update(adapter=version, published=True)
            recorded["result"] = _record(
                config, result, started, clock, log, status="published",
                message=f"Published adapter {version}; the next reply uses it.",
                pairs_used=pairs_used, model=model_path.name,
                adapter={"version": version, "status": "published", "base_model": model_path.name,
                         "conversations": conversations, "report": summary})
        check_not_deleted(data_dir)         # publish would re-create adapters/ in a wiped folder
        version = adapter_files.publish(adapter_config, outcome["gguf"], outcome["peft"], {
            "run_id": result["run_id"], "base": adapter_files.base_identity(model_path),
            "pairs": {"train": len(train), "heldout": len(heldout)}, "gate": summary},
            before_activating=record)
        if "result" not in recorded:
            raise RuntimeError("the run could not be recorded, so its adapter was not used")
        result = recorded["result"]
        if version is not None:
            from .ipc import tell_app_adapters_changed
            tell_app_adapters_changed(data_dir)      # now in use: the window's label follows
        else:
            result.update(published=False, status="not_published", message=(
                f"Adapter {result['adapter']} was retired as it was published: a conversation "
                "it learned from was deleted meanwhile. The chat keeps its previous state."))
    else:
        adapter_row = {"version": f"run-{result['run_id']}", "status": "refused",
                       "base_model": model_path.name, "conversations": conversations,
                       "reason": "; ".join(outcome["reasons"]), "report": summary}
        message = "Trained, but not published: " + "; ".join(outcome["reasons"]) + "."
        result = _record(config, result, started, clock, log, status="not_published",
                         message=message, pairs_used=pairs_used, adapter=adapter_row,
                         model=model_path.name)
    shutil.rmtree(outcome["work"], ignore_errors=True)
    return result


def _gate_summary(report: dict) -> dict:
    reward, drift = report.get("reward") or {}, report.get("drift") or {}
    return {"heldout_pairs": reward.get("heldout_pairs", 0),
            "implicit_reward_accuracy": reward.get("implicit_reward_accuracy"),
            "sign_test_p": reward.get("sign_test_p"), "policy_accuracy": reward.get("policy_accuracy"),
            "base_accuracy": reward.get("base_accuracy"), "kl_per_token": drift.get("kl_per_token"),
            "length_ratio": drift.get("length_ratio"), "reasons": report.get("reasons"),
            # How many of the pairs the exported file was checked on moved clearly more than
            # the arithmetic's noise: 0 means the file could not be told from the weights.
            "file_check": {k: (reward.get("published") or {}).get(k)
                           for k in ("pairs", "checked", "slope", "noise_rms")}}


def work_folder(data_dir, pairs, gate, model_path, dpo) -> Path:
    """Where a run trains, and an interrupted one resumes: named by the pairs its weights
    learn from — the training side of ``gate``'s split only: a changed split (the gate's
    seed or held-out share) must never resume weights that learned from conversations now
    held out to judge them — the base model and the settings that shape the adapter."""
    from .checkpoint import checkpoint_key
    train, _ = split_by_conversation(pairs, gate)
    key = fingerprint(train) + "-" + checkpoint_key(model_path)[:8] + "-" + \
        _settings_key(dpo.to_dict())
    return Path(data_dir) / WORK / key


def _settings_key(settings: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _record(config, result, started, clock, log, status, message, pairs_used=None, adapter=None,
            model=None) -> dict:
    result.update(status=status, message=message,
                  seconds=round(time.perf_counter() - clock, 2))
    outcome = {"status": status, "message": message, "via": result.get("via"),
               "base_model": model, "started_wall_ns": started,
               "pairs": sum(result["pairs"].values()) if result["pairs"] else 0,
               "pairs_by_source": result["pairs"], "fingerprint": result.get("fingerprint"),
               "adapter_version": result.get("adapter"), "published": result["published"],
               "report": {k: result.get(k) for k in ("timings", "train", "eval", "pair_report",
                                                      "split", "retired", "reward_models")},
               "pairs_used": pairs_used or [], "adapter": adapter}
    at = time.perf_counter()
    _before_recording()
    if result.get("began"):     # the run found or made the database: gone means deleted
        check_not_deleted(config.data_dir)
    _with_store(Path(config.data_dir), lambda s: s.finish(result["run_id"], outcome),
                config.wait_for_store_s, log)
    result["timings"]["record"] = round(time.perf_counter() - at, 2)
    result["recorded"] = True
    return result   # the caller says the outcome (message); the log is for progress


def status(data_dir: Path) -> dict:
    """What ``align status --json`` prints: the active adapter, versions, recent runs."""
    data_dir = Path(data_dir)
    root = adapter_files.adapters_dir(data_dir)
    out = {"data_dir": str(data_dir), "active": adapter_files.read_active(root).get("version"),
           "in_use": adapter_files.in_use(root),
           "active_file_damaged": adapter_files.active_file_damaged(root),
           "versions": adapter_files.list_versions(root), "runs": [], "running": False}
    from .locks import as_seen_now, job_running
    out["running"] = job_running(data_dir)

    def read(source):
        if isinstance(source, _App):
            return {"runs": source.client.request("runs", limit=10)["runs"], "via": "app"}
        store = source._open()
        try:
            return {"runs": store.training.runs(10), "via": "direct"}
        finally:
            store.close()
    try:
        found = _with_store(data_dir, read, 5.0, lambda m: None)
        out["runs"], out["via"] = as_seen_now(found["runs"], data_dir), found["via"]
    except NoData as nothing:        # not an error: no runs yet (or none left)
        out["no_data"] = str(nothing)
    except Exception as error:  # noqa: BLE001 - status still shows the files
        out["runs_error"] = str(error)
    return out
