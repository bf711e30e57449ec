"""Stage 5: adapter versions under ``<data dir>/adapters/`` — publish, list, roll back.

    adapters/
      v0007/adapter.gguf       what llama.cpp loads
      v0007/peft/              the same adapter for transformers (parity checks, retraining)
      v0007/manifest.json      base model, pairs, gate report, creation time
      active.json              {"version": "v0007", "counter": 7,
                                "models": {"smollm2.gguf": "v0007", "other.gguf": "v0004"}}

Publishing is atomic at each step: the version is assembled in a hidden staging folder,
renamed into place in one step, and only then ``active.json`` is replaced (written to a
temporary file, fsynced, renamed). A reader — the chat engine checks ``active.json``
before every reply — sees the old adapter or the new one, never half of one. Only the
newest :attr:`AdapterConfig.keep` versions are kept (never one in use). The engine
uses an adapter only with the base model it was trained on (name, size, digest).

Each base model has its own version in use (``models``, by file name; null = its base):
a publish, rollback or retirement in one model's line leaves the others' alone. (Before
that map existed one ``version`` served all models, each using its newest version up to
it: a file without the map, or a model missing from it, is still read that way, and the
first write puts every model's current version in the map.) ``version`` is the version
activated last.

No torch and no database here: the app imports this module.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ACTIVE_FILE = "active.json"
GGUF_NAME = "adapter.gguf"


@dataclass
class AdapterConfig:
    root: Path                 # <data dir>/adapters
    keep: int = 5


def adapters_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "adapters"


def base_identity(model_path: str | os.PathLike) -> dict:
    """Which base model an adapter fits. Name and size alone would let an updated model of
    the same name and quantisation (the same size, other weights) take an old adapter, so
    a digest of 16 slices spread over the file is part of it; a copy of the same file has
    the same identity."""
    path = Path(model_path)
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size,
            "sample_sha256": _sampled_digest(str(path.resolve()), stat.st_size,
                                             stat.st_mtime_ns, stat.st_ino)}


@functools.lru_cache(maxsize=16)
def _sampled_digest(path: str, size: int, mtime_ns: int, inode: int, slices: int = 16,
                    slice_bytes: int = 65536) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for k in range(slices):
            handle.seek(max(0, (size - slice_bytes) * k // max(1, slices - 1)))
            digest.update(handle.read(slice_bytes))
    return digest.hexdigest()[:32]


def same_base(recorded: dict | None, current: dict) -> bool:
    """An adapter's recorded base against the loaded model's identity (versions written
    before the digest existed are matched by name and size)."""
    if not recorded:
        return False
    return all(recorded.get(key) == value for key, value in current.items()
               if key in recorded or key != "sample_sha256")


# --- reading ---------------------------------------------------------------------------------
def read_active(root: Path) -> dict:
    """The active version and the version counter; the base model's state for a file
    that does not read as one (JSON that is not an object, a version that is not a name:
    `null` there was a traceback in every command and before every reply)."""
    base = {"version": None, "counter": 0}
    try:
        found = json.loads((Path(root) / ACTIVE_FILE).read_text())
    except (OSError, ValueError):
        return base
    if not _well_formed(found):
        return base
    return found


def _well_formed(active) -> bool:
    models = active.get("models", {}) if isinstance(active, dict) else None
    return isinstance(active, dict) and isinstance(active.get("version"), (str, type(None))) \
        and isinstance(active.get("counter", 0), int) and isinstance(models, dict) \
        and all(isinstance(v, (str, type(None))) for v in models.values()) \
        and isinstance(active.get("line"), (str, type(None)))


def _model_of(root: Path, version: str | None) -> dict | None:
    """The base model a version was trained on, as its manifest records it."""
    base = (manifest(root, version) or {}).get("base") if version else None
    return base if isinstance(base, dict) and base.get("name") else None


def model_key(base: dict) -> str:
    """How ``active.json`` names a base model: its file name and digest (two different
    models may share a file name, ``model.gguf``); the name alone for versions recorded
    before the digest existed."""
    digest = base.get("sample_sha256")
    return f"{base['name']}#{digest}" if digest else base["name"]


def version_for(root: Path, base: dict, state: dict | None = None) -> str | None:
    """The version chats with the model ``base`` (its :func:`base_identity`) answer with,
    None for the base model itself."""
    root = Path(root)
    state = read_active(root) if state is None else state
    models = state.get("models") or {}
    for key in (model_key(base), base.get("name")):
        if key in models:
            chosen = models[key]
            # (a chosen version trained on an older file of the same name does not fit:
            # its newest older version that does, if any)
            return _newest_for(root, chosen, base) if chosen else None
    active = state.get("version")          # (a file from before the map, or a new model)
    return _newest_for(root, active, base) if active else None


def _bases(root: Path) -> dict[str, dict]:
    """Each base model some kept version was trained on, by :func:`model_key`, newest first."""
    found = {}
    for version in reversed(versions(root)):
        base = _model_of(root, version)
        if base:
            found.setdefault(model_key(base), base)
    return found


def trained_pairs(info: dict) -> int | None:
    """How many pairs a version learned from, as its manifest says ({"train": n,
    "heldout": m}; versions written before said n)."""
    pairs = info.get("pairs")
    pairs = pairs.get("train") if isinstance(pairs, dict) else pairs
    return pairs if isinstance(pairs, int) else None


def active_file_damaged(root: Path) -> bool:
    """active.json exists but does not read: the chat then uses the base model, and
    the user should hear why (the next publish rewrites it)."""
    path = Path(root) / ACTIVE_FILE
    if not path.exists():
        return False
    try:
        return not _well_formed(json.loads(path.read_text()))
    except (OSError, ValueError):
        return True


def manifest(root: Path, version: str) -> dict | None:
    try:
        return json.loads((Path(root) / version / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def versions(root: Path) -> list[str]:
    """Published versions on disk, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir()
             if p.is_dir() and p.name.startswith("v") and (p / GGUF_NAME).exists()
             and (p / "manifest.json").exists()]
    return sorted(found, key=lambda name: int(name[1:]) if name[1:].isdigit() else -1)


def list_versions(root: Path) -> list[dict]:
    """Each kept version; ``active``: some model's chats answer with it."""
    used = set(in_use(root).values())
    out = []
    for version in versions(root):
        info = manifest(root, version) or {}
        out.append({"version": version, "active": version in used,
                    "created_wall_ns": info.get("created_wall_ns"), "base": info.get("base"),
                    "pairs": info.get("pairs"), "run_id": info.get("run_id"),
                    "gate": info.get("gate"), "path": str(Path(root) / version / GGUF_NAME)})
    return out


def active_adapter(root: Path, model_path: str | os.PathLike | None = None) -> dict | None:
    """The manifest plus ``path`` (its GGUF) of the version chats with ``model_path``
    answer with (without: the version activated last), or None for the base model."""
    if model_path is None:
        version = read_active(root).get("version")
    else:
        try:
            version = version_for(root, base_identity(model_path))
        except OSError:
            return None
    if not version:
        return None
    info = manifest(root, version)
    path = Path(root) / version / GGUF_NAME
    if info is None or not path.exists():
        return None
    return dict(info, version=version, path=str(path))


# --- writing ---------------------------------------------------------------------------------
_held = threading.local()


@contextlib.contextmanager
def _state_lock(root: Path):
    """``active.json`` is read, changed and written by the nightly job (publish, prune),
    the app (retiring what a deleted conversation taught) and ``align rollback``: one at
    a time, or one's write undid another's. Re-entrant within a thread."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    from feedback_store.locks import lock_file, unlock_file
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root / ".active.lock", "a+") as handle:
        lock_file(handle, blocking=True)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            unlock_file(handle)


def _with_models(root: Path, state: dict, publishing: bool = True) -> dict:
    """``state`` with every kept model in its ``models`` map, at the version it uses now
    (a file written before the map, or a model new to it). A missing or damaged file
    left every model on its base until the next publish, which then gave each model its
    newest kept version: so it still does (``publishing``), and the map records that.
    Anything else (a retirement) leaves them on their base."""
    models = dict(state.get("models") or {})
    lost = publishing and not models and state.get("version") is None and (
        not (Path(root) / ACTIVE_FILE).exists() or active_file_damaged(root))
    kept = versions(root)
    reading = dict(state, version=kept[-1]) if lost and kept else state
    for key, base in _bases(root).items():
        if key not in models and base["name"] not in models:
            models[key] = version_for(root, base, reading)
    return dict(state, models=models)


def _activate(root: Path, version: str | None, base: dict | None, counter: int | None = None) -> None:
    """``version`` (None: the base model) in use for the model ``base``, the others as
    they were; ``line``: the model a plain ``align rollback`` steps back."""
    with _state_lock(root):
        state = _with_models(root, read_active(root))
        if base is not None:
            state["models"][model_key(base)] = version
            state["line"] = model_key(base)
        state["version"] = version
        if counter is not None:
            state["counter"] = counter
        _write_active(root, state)


def _write_active(root: Path, state: dict) -> None:
    root = Path(root)
    temporary = root / f".{ACTIVE_FILE}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(state, updated_wall_ns=time.time_ns()), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, root / ACTIVE_FILE)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


PENDING = ".pending-"
# An empty file per retired version: its number was spent (the run's record names it),
# and where active.json, which keeps the counter, was lost, the folders left were all
# that numbered the next version: a retired number came back for a new adapter.
RETIRED = ".retired-"


def publish(config: AdapterConfig, gguf_path: Path, peft_dir: Path | None, info: dict,
            before_activating=None) -> str | None:
    """Install a new version and make it the active one; returns its name.

    ``before_activating(version)`` runs while the version is installed but hidden
    (``.pending-vNNNN``): the nightly job records the version and the pairs it learned
    from there, so an adapter is never in use without the record that lets a deleted
    conversation retire it. If it raises, the version is removed; if the version was
    retired meanwhile (its conversation deleted while it was being recorded), it is not
    activated and None is returned."""
    root = Path(config.root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = read_active(root)
    existing = [_number(p.name.removeprefix(PENDING).removeprefix(RETIRED)) for p in root.iterdir()
                if p.name.startswith(("v", PENDING, RETIRED))]
    number = max([int(state.get("counter") or 0), *existing]) + 1
    version = f"v{number:04d}"
    pending = root / f"{PENDING}{version}"
    staging = root / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    try:
        shutil.copyfile(gguf_path, staging / GGUF_NAME)
        if peft_dir is not None and Path(peft_dir).is_dir():
            shutil.copytree(peft_dir, staging / "peft")
        (staging / "manifest.json").write_text(json.dumps(
            dict(info, version=version, created_wall_ns=info.get("created_wall_ns") or time.time_ns()),
            indent=2, default=str))
        for child in staging.rglob("*"):
            os.chmod(child, 0o600 if child.is_file() else 0o700)
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        os.rename(staging, pending)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Put in place and activated under one lock: a retirement in between removed the
    # folder, and active.json was then made to name it.
    held = contextlib.ExitStack()
    try:
        if before_activating is not None:
            before_activating(version)
        if not root.is_dir():           # everything was deleted meanwhile: never re-create it
            raise FileNotFoundError(root)
        held.enter_context(_state_lock(root))
        os.rename(pending, root / version)
    except BaseException as error:
        held.close()
        # The number is spent either way (a record may name it): never hand it out again.
        if root.is_dir():               # (not when everything was deleted meanwhile)
            with _state_lock(root):
                _write_active(root, dict(read_active(root), counter=number))
        if isinstance(error, FileNotFoundError) and not pending.exists():
            return None                 # retired while it was being recorded
        shutil.rmtree(pending, ignore_errors=True)
        raise
    with held:
        _fsync_dir(root)
        _activate(root, version, _model_of(root, version), counter=number)
    prune(config)
    return version


def set_active(config: AdapterConfig, version: str | None, model: str | None = None) -> None:
    """Make ``version`` the one its model's chats answer with; None: the base model for
    ``model`` (a file name or path; default: :func:`line`)."""
    root = Path(config.root)
    if version is not None and version not in versions(root):
        raise KeyError(f"No adapter version {version!r}; `align adapters list` shows them.")
    with _state_lock(root):
        base = _model_of(root, version) if version else line(root, model)
        _activate(root, version, base)


def models_with_versions(root: Path) -> list[str]:
    """The base models (file names) some kept version was trained on."""
    return sorted({base["name"] for base in _bases(root).values()})


def line(root: Path, model: str | None = None) -> dict | None:
    """The base model (as its newest kept version records it) whose line a command acts
    on: ``model`` by file name or path, else the one published or rolled back last, else
    the only one there is."""
    root = Path(root)
    bases = _bases(root)
    if model is not None:
        # As status names them ("model.gguf (1a2b3c4d)" where two share a file name),
        # else by file name or path.
        labelled = _labels(bases)
        name = Path(model).name
        return next((bases[key] for key, label in labelled.items() if label == model), None) or \
            next((base for base in bases.values() if base["name"] == name), None)
    state = read_active(root)
    base = bases.get(state.get("line")) or _model_of(root, state.get("version"))
    if base is None and len(bases) == 1:
        base = next(iter(bases.values()))
    return base


def rollback(config: AdapterConfig, model: str | None = None) -> str | None:
    """Step the model ``model`` (default: :func:`line`) back to its version before the one
    in use (the base model when there is none); returns the version it now uses. Other
    models keep theirs."""
    root = Path(config.root)
    with _state_lock(root):
        base = line(root, model)
        if base is None:
            if model is not None:
                raise KeyError(f"No adapter version was trained on {Path(model).name!r}.")
            if len(_bases(root)) > 1:
                raise KeyError("Several models have adapters: say which with --model.")
            raise ValueError("No adapter is active: Glance already answers with the base model.")
        current = version_for(root, base)
        if current is None:
            raise ValueError("No adapter is active for "
                             f"{base['name']}: it already answers with the base model.")
        older = _older_of_the_same_model(root, current)
        target = older[-1] if older else None
        _activate(root, target, base)
    return target


def in_use(root: Path, state: dict | None = None) -> dict[str, str | None]:
    """For each base model some kept version was trained on: the version its chats answer
    with now (as :func:`active_adapter` picks it), None for the base. Keyed by file name
    (and the digest's start, where two models share a name)."""
    root = Path(root)
    state = read_active(root) if state is None else state
    bases = _bases(root)
    labelled = _labels(bases)
    return {labelled[key]: version_for(root, bases[key], state)
            for key in sorted(bases, key=lambda key: labelled[key])}


def _labels(bases: dict) -> dict:
    """Each base model's name for people: its file name, and the start of its digest
    where two models share a file name."""
    names = [base["name"] for base in bases.values()]
    return {key: base["name"] if names.count(base["name"]) == 1
            else f"{base['name']} ({str(base.get('sample_sha256'))[:8]})"
            for key, base in bases.items()}


def _newest_for(root: Path, active: str, base: dict) -> str | None:
    """The version chats with ``base`` answer with while ``active`` is chosen: ``active``
    itself if it was trained on that model, else the newest older one that was."""
    return next((v for v in reversed(versions(root)) if _number(v) <= _number(active)
                 and same_base((manifest(root, v) or {}).get("base"), base)), None)


def _older_of_the_same_model(root: Path, version: str) -> list[str]:
    """The kept versions before ``version`` trained on its base model, oldest first: one
    of another model's would be "in use" only in name (the chat checks the base)."""
    base = (manifest(root, version) or {}).get("base")
    return [v for v in versions(root) if _number(v) < _number(version)
            and (base is None or same_base((manifest(root, v) or {}).get("base"), base))]


def retire(config: AdapterConfig, version: str) -> str | None:
    """Delete a version (e.g. it learned from a conversation since deleted). A model that
    used it falls back to its newest older version (or its base). Returns the version
    now activated last."""
    root = Path(config.root)
    with _state_lock(root):
        state = _with_models(root, read_active(root), publishing=False)
        older = _older_of_the_same_model(root, version)
        replacement = older[-1] if older else None
        changed = False
        for key, used in state["models"].items():
            if used == version:
                state["models"][key] = replacement
                changed = True
        if state.get("version") == version:
            state["version"] = replacement
            changed = True
        if changed:
            _write_active(root, state)
        shutil.rmtree(root / version, ignore_errors=True)
        shutil.rmtree(root / f"{PENDING}{version}", ignore_errors=True)   # not yet in use
        if root.is_dir():
            os.close(os.open(root / f"{RETIRED}{version}", os.O_WRONLY | os.O_CREAT, 0o600))
        _fsync_dir(root)
    return state.get("version")


def prune(config: AdapterConfig) -> list[str]:
    root = Path(config.root)
    removed = []
    with _state_lock(root):
        state = read_active(root)
        used = {state.get("version"), *(state.get("models") or {}).values(),
                *in_use(root, state).values()}
        kept = versions(root)
        while len(kept) > config.keep:
            victim = next((v for v in kept if v not in used), None)
            if victim is None:
                break
            shutil.rmtree(root / victim, ignore_errors=True)
            kept.remove(victim)
            removed.append(victim)
    for stale in [*root.glob(".staging-*"), *root.glob(f"{PENDING}*")]:
        try:
            old = time.time() - stale.stat().st_mtime > 3600   # a publish that died half-way
        except OSError:
            continue                                           # retired meanwhile
        if old:
            shutil.rmtree(stale, ignore_errors=True)
    return removed


def _number(version: str) -> int:
    return int(version[1:]) if version and version[1:].isdigit() else -1


def retire_stale(store, root: Path) -> list[str]:
    """Retire every published version that learned from a conversation deleted since
    (the deletion removed that conversation's training_pairs rows): its files are
    deleted and its row marked. Returns the versions retired."""
    stale = store.training.stale_adapter_versions()
    config = AdapterConfig(Path(root))
    for version in stale:
        retire(config, version)
        store.training.set_adapter_status(
            version, "retired", "it learned from a conversation that has since been deleted")
    return stale


# --- unfinished training state (``training/work/<key>``) --------------------------------------
LEARNED_FROM = "conversations.json"


def note_learned_from(work: Path, conversation_ids) -> None:
    """Which conversations an unfinished run's weights learned from, so they can be kept
    for it to resume while those all still exist."""
    work.mkdir(parents=True, exist_ok=True)
    (work / LEARNED_FROM).write_text(json.dumps(sorted(conversation_ids)))


def remove_stale_work(store, work_root: Path) -> list[str]:
    """Remove unfinished training state that learned from a conversation deleted since
    (or whose note is missing or unreadable). The rest stays: removed at every app start,
    an interrupted run could never resume, though the README says it does."""
    removed = []
    for work in sorted(work_root.iterdir()) if work_root.is_dir() else []:
        try:
            ids = set(json.loads((work / LEARNED_FROM).read_text()))
        except (OSError, ValueError, TypeError):
            ids = None
        if ids is None or store.training.existing_conversations(ids) != ids:
            shutil.rmtree(work, ignore_errors=True)
            removed.append(work.name)
    return removed
