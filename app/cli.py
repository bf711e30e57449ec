"""`glance`: the desktop app and its sub-commands. Mirrors the library one to one."""
import argparse
import gc
import json
import os
import platform
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from feedback_store.paths import not_utf8_problem, output_reader_gone
from feedback_store import (SIGNALS, DatabaseLocked, FeedbackStore, NoGlanceData, StoreError,
                            UnknownConversation, glance_home)
from feedback_store.errors import permission_message

from . import __version__
from .engine import EmptyPrompt, EngineError
from .models import ModelError, choose_model, default_model_path, inspect_model, require_chat_template


def _number(kind, low, high, what):
    """An argparse type that refuses values outside [low, high] with a clear message,
    before any command runs (so nothing is written for a bad argument)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}, not {text}")
        return value
    return parse


def _text(what):
    def parse(text):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        return text
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glance", description="Glance: a private local chat.")
    parser.add_argument("--model", help="path to a .gguf model (remembered in the model list)")
    parser.add_argument("--version", action="version", version=f"glance {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = commands.add_parser("chat", help="run one chat turn in the terminal")
    chat.add_argument("--prompt", required=True)
    # SUPPRESS: absent here, it must not overwrite `glance --model X chat ...`'s value.
    chat.add_argument("--model", default=argparse.SUPPRESS, help="as `glance --model`")
    chat.add_argument("--conversation", type=_text("--conversation"),
                      help="continue this conversation id (see `glance conversations`)")
    chat.add_argument("--seed", type=_number(int, 0, 2**32 - 1, "--seed"))
    chat.add_argument("--max-tokens", type=_number(int, 1, 32768, "--max-tokens"))
    chat.add_argument("--temperature", type=_number(float, 0.0, 2.0, "--temperature"))
    chat.add_argument("--top-p", type=_number(float, 0.01, 1.0, "--top-p"))
    chat.add_argument("--json", action="store_true", help="print one JSON object")

    conversations = commands.add_parser("conversations", help="list conversations and their ids")
    conversations.add_argument("--search", help="only those whose title or text contains this")
    conversations.add_argument("--json", action="store_true")

    doctor = commands.add_parser("doctor", help="check versions, model, data dir, camera, database, last night, reward models")
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--model", default=argparse.SUPPRESS, help="as `glance --model`: check this model")

    models = commands.add_parser("models", help="list, add or download models")
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    model_commands.add_parser("list", help="the default model and the ones you added")
    add = model_commands.add_parser("add", help="check a .gguf file and add it to the list")
    add.add_argument("path", type=_text("the model path"))
    remove = model_commands.add_parser("remove", help="take a model off the list (the file stays)")
    remove.add_argument("path", type=_text("the model path"))
    download = model_commands.add_parser("download", help="download a GGUF from the Hugging Face hub")
    download.add_argument("repo", type=_text("the repository"))
    download.add_argument("file", type=_text("the file name"))
    download.add_argument("--sha256", help="expected checksum of the file")
    download.add_argument("--revision", default="main")

    data = commands.add_parser("data", help="see, export or delete what Glance stores")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    status = data_commands.add_parser("status", help="encryption, consents and how many rows each table holds")
    status.add_argument("--json", action="store_true")
    export = data_commands.add_parser("export", help="write everything stored to a folder")
    export.add_argument("directory", type=_text("the export folder"))
    delete = data_commands.add_parser("delete", help="delete one conversation or everything")
    target = delete.add_mutually_exclusive_group(required=True)
    target.add_argument("--conversation", type=_text("--conversation"))
    target.add_argument("--all", action="store_true")
    delete.add_argument("--yes", action="store_true", help="confirm --all")

    consent = commands.add_parser("consent", help="turn a signal's consent on or off")
    consent_commands = consent.add_subparsers(dest="consent_command", metavar="ACTION", required=True)
    set_consent = consent_commands.add_parser("set", help="e.g. `glance consent set pointer on`")
    set_consent.add_argument("signal", choices=list(SIGNALS))
    set_consent.add_argument("state", choices=["on", "off"])
    return parser


class _WithoutPandas:
    """A meta-path finder that says pandas is not installed (see :func:`entry`). Unlike a
    ``None`` entry in ``sys.modules``, it leaves ``"pandas" in sys.modules`` false, which
    is what libraries that merely check for pandas expect."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not used by the glance process")
        return None


def entry() -> int:
    """The `glance` command (a process of its own; tests call :func:`main` in theirs)."""
    # DuckDB's Python binding imports pandas the first time a statement has parameters,
    # only to check whether a parameter is a DataFrame: 0.1 s of a one-shot `glance chat`
    # on the writer thread while the model loads (measured, bench/startup.py). Glance
    # never passes pandas objects and nothing in the app's process uses pandas, so the
    # `glance` process hides it (DuckDB then skips the check). `align` keeps it.
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = output_reader_gone()
    # Everything is written and closed by now. Python's shutdown still runs full garbage
    # collections over every object the process made (≈ 40 ms of a one-shot `glance
    # chat`, measured, bench/startup.py) only to find cycles the exit frees anyway;
    # frozen objects are skipped by those passes, while finalizers and atexit run as usual.
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # whatever Glance writes is the user's alone
    args = build_parser().parse_args(argv)
    problem = not_utf8_problem(args)
    if problem:
        print(f"glance: {problem}", file=sys.stderr)
        return 2
    if args.model is not None and args.command not in (None, "chat", "doctor"):
        # Ignored without a word, `glance --model X conversations` looked as if it listed
        # something of X's.
        print(f"glance: --model chooses the model of the window, `glance chat` and `glance "
              f"doctor`; `glance {args.command}` does not use one (to list a model: "
              "`glance models add PATH`).", file=sys.stderr)
        return 2
    try:
        if args.command is None:
            if sys.platform.startswith("linux") and not (
                    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                    or os.environ.get("QT_QPA_PLATFORM")):
                print("glance: no display found (DISPLAY is not set), so the window cannot "
                      "open. Run it in a desktop session, or use `glance chat --prompt ...`.",
                      file=sys.stderr)
                return 2
            from .ui.main import run_app
            return run_app(model_path=args.model)
        handler = {"chat": cmd_chat, "conversations": cmd_conversations, "doctor": cmd_doctor, "models": cmd_models,
                   "data": cmd_data, "consent": cmd_consent}[args.command]
        return handler(args) or 0
    except (StoreError, ModelError, EngineError) as error:
        print(f"glance: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:
        print(f"glance: {permission_message(error)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, RuntimeError) as error:     # Ctrl-C, also during a query
        from feedback_store.errors import interrupted
        if not interrupted(error):
            raise
        return 130


@contextmanager
def _ctrl_c_stops(cancel: threading.Event, say: str | None = None):
    """The first Ctrl-C sets ``cancel`` (and prints ``say``) instead of raising; a second
    interrupts at once. In `glance chat` it stops the reply as Esc does in the window: the
    reply so far is stored and the conversation stays a turn-by-turn one (raised through,
    it lost the reply and left the question unanswered: the next turn sent two user
    messages in a row). In `glance data delete` the deletion finishes."""
    import signal

    def stop(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        if say:
            print(say, file=sys.stderr, flush=True)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _chat_engine(store, model: str | None):
    """The engine `glance chat` answers with: ``model``, else the start model chosen in the
    window, with the personal adapter as the window uses it."""
    from .engine import ChatEngine
    try:
        engine = ChatEngine(choose_model(store, model))
    except ModelError as error:
        if model:
            raise
        # The start model does not load (any more): as the window does, say so and
        # use the default, which then starts (the same failure came at every chat).
        print(f"glance: {error} Using the default model instead.", file=sys.stderr)
        engine = ChatEngine()
        store.models.remember(engine.model_info)
    if model:
        store.models.remember(engine.model_info)  # only once it has loaded
    if (store.data_dir / "adapters").is_dir():      # (align.adapters.adapters_dir)
        # As the window answers: with the personal adapter published for this model,
        # unless Personal is off. The one-shot chat answered with the base model.
        from app.session import personal_adapter_wanted
        from align.adapters import adapters_dir
        engine.use_adapters(adapters_dir(store.data_dir))
        engine.set_adapter_enabled(personal_adapter_wanted(store))
    return engine


def _printer(cancel: threading.Event):
    """Prints the reply as it streams. Its reader gone (`glance chat … | head -c 20`), the
    reply stops as Ctrl-C stops it, kept so far: the BrokenPipeError lost it and left the
    question unanswered (the next turn sent two user messages in a row)."""
    def show(piece):
        try:
            print(piece, end="", flush=True)
        except BrokenPipeError:
            output_reader_gone()
            cancel.set()
    return show


def cmd_chat(args) -> int:
    from .chat import ChatService
    if not args.prompt.strip():
        raise EmptyPrompt()
    if args.model:     # checked before the data folder is opened (or made, the first time)
        require_chat_template(inspect_model(args.model))
    cancel = threading.Event()
    try:   # a conversation to continue needs data that exists: none is made to refuse it
        opened = FeedbackStore.open_existing() if args.conversation else FeedbackStore.open()
    except NoGlanceData:
        raise UnknownConversation(args.conversation) from None
    with opened as store:
        # Everything the user typed is checked before the model loads or a row is written.
        known = store.conversations.get(args.conversation) if args.conversation else None
        if args.conversation and known is None:
            raise UnknownConversation(args.conversation)
        # From here Ctrl-C sets `cancel` rather than raising: while the model loads, Python
        # runs only inside llama-cpp's log callback, where a KeyboardInterrupt is printed
        # and dropped, and the whole reply then ran. The flag is looked at once it loaded.
        with _ctrl_c_stops(cancel):
            engine = _chat_engine(store, args.model)
            try:
                if cancel.is_set():
                    print("glance: stopped while the model loaded; nothing was sent.",
                          file=sys.stderr)
                    return 130
                service = ChatService(store, engine)
                tree = service.open(args.conversation) if args.conversation else service.new_conversation()
                # For this turn only: the chat keeps its own settings (the window's).
                tree.overrides = {name: getattr(args, name) for name in
                                  ("seed", "max_tokens", "temperature", "top_p")
                                  if getattr(args, name) is not None}
                tree.settings().validate()
                stream_to_terminal = not args.json
                on_token = _printer(cancel) if stream_to_terminal else None
                user, reply = service.send(tree, args.prompt, on_token=on_token, cancel=cancel)
            finally:
                engine.close()
    if reply.finish_reason == "cancelled" and stream_to_terminal:
        print("\n(stopped: the reply so far is kept, as in the window)", end="", file=sys.stderr)
    elif reply.finish_reason == "length" and stream_to_terminal:
        print("\n(cut at the token limit: --max-tokens, or the chat's own setting)", end="",
              file=sys.stderr)
    if reply.dropped_turns:
        print(f"\n(note: {reply.dropped_turns} oldest turns were left out to fit the context)",
              file=sys.stderr)
    if engine.adapter_error:       # the window says it in its status bar; here it went unsaid
        print(f"\nglance: {engine.adapter_error}", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "reply": reply.content, "conversation_id": tree.id, "message_id": reply.id,
            "model": reply.model, "tokens": reply.tokens, "ttft_s": reply.ttft_s,
            "tokens_per_s": reply.tokens_per_s, "finish_reason": reply.finish_reason,
            "dropped_turns": reply.dropped_turns, "adapter": engine.adapter_version,
            "adapter_error": engine.adapter_error}))
    else:
        print()
        if not args.conversation:      # how to go on with it (--json gives conversation_id)
            print(f"(glance chat --conversation {tree.id} --prompt … continues this chat)",
                  file=sys.stderr)
    return 0


def cmd_conversations(args) -> int:
    try:
        with FeedbackStore.open_existing() as store:
            found = store.conversations.list(args.search)
    except NoGlanceData:
        found = []
    if args.json:
        print(json.dumps([{"id": c.id, "title": c.title, "updated_wall_ns": c.updated_wall_ns}
                          for c in found]))
    elif not found:
        print("No conversations yet." if not args.search else "No conversation matches.")
    for conversation in [] if args.json else found:
        print(f"{conversation.id}  {conversation.title}")
    return 0


def cmd_doctor(args) -> int:
    from importlib import metadata  # ≈ 17 ms: only the doctor needs package versions
    from gaze.camera import camera_status
    report = {"glance": __version__, "python": platform.python_version(), "versions": {}}
    for package in ("llama-cpp-python", "duckdb", "duckdb-extension-httpfs", "PySide6-Essentials",
                    "gguf", "numpy", "keyring", "mediapipe", "torch"):
        try:
            report["versions"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            report["versions"][package] = None
    try:   # the model asked for (`glance --model X doctor`), else the embedded default
        report["model"] = {"path": str(args.model or default_model_path()), "ok": True}
        inspect_model(report["model"]["path"])
    except ModelError as error:
        report["model"] = {"path": None, "ok": False, "error": str(error)}
    report["data_dir"] = str(glance_home())
    chosen = None                        # the camera chosen in the window, from the store
    try:
        status, runs, scoring = _store_status()
        chosen = status.get("gaze_camera")
        if scoring is not None:          # only the open window scores
            report["scoring"] = scoring
        report["database"] = {"ok": True, "exists": True, "encryption": status["encryption"],
                              "key_storage": status["key_storage"],
                              "schema_version": status["schema_version"],
                              "counts": status["counts"], "app_open": status["app_open"]}
        report["nightly"] = _nightly(runs)
    except NoGlanceData:
        # Nothing is wrong: the first chat makes it. (The doctor made a database and a key
        # itself, even right after Delete everything.)
        report["database"] = {"ok": True, "exists": False}
        report["nightly"] = _nightly([])
    except StoreError as error:
        report["database"] = {"ok": False, "error": str(error)}
    report["camera"] = camera_status(chosen)
    report["reward"] = _reward_models()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"Glance {report['glance']} on Python {report['python']}")
        for package, version in report["versions"].items():
            print(f"  {package:26} {version or 'not installed'}")
        print(f"Model:    {report['model'].get('path') or report['model'].get('error')}")
        print(f"Data dir: {report['data_dir']}")
        camera = report["camera"]
        print(f"Camera:   {', '.join(camera['devices']) if camera['available'] else 'none found'}")
        if len(camera["devices"]) > 1 or camera["chosen_by"] != "default":
            print(f"          gaze uses {camera['gaze_uses']} (chosen by {camera['chosen_by']}; "
                  "Gaze… → Camera in the window, or GLANCE_CAMERA=/dev/videoN, chooses another)")
        database = report["database"]
        if database["ok"] and not database["exists"]:
            print(f"Database: none yet in {report['data_dir']} (the first chat makes it)")
        else:
            print("Database: " + (f"ok, encrypted, key in {database['key_storage']}, schema "
                                  f"{database['schema_version']}"
                                  + (" (open in the Glance window, which answered)"
                                     if database["app_open"] else "")
                                  if database["ok"] else database["error"]))
        if "nightly" in report:
            last = report["nightly"]["last_run"]
            when = ("never run (align --nightly, or align schedule install)" if last is None else
                    f"last run {last['started']} {last['status']}: {last['message']}")
            print(f"Nightly:  {when}")
            # An adapter fits the model it was trained on, and Personal can turn it off:
            # "the chat answers with it" was wrong after a switch of model or with it off.
            # Each model has its own version (align rollback --model steps one back).
            used = {name: v for name, v in report["nightly"]["in_use"].items() if v}
            print("Adapter:  " + ("; ".join(f"{v}, for {name}" for name, v in used.items())
                                  + (" (the chat answers with it on that model" if len(used) == 1
                                     else " (the chat answers with each on its model")
                                  + " while Personal is on)"
                                  if used else "none: the chat answers with the base model"))
        for task, model in report["reward"].items():
            if model is None:
                text = ("none: replies are not scored from your reading (align reward train)"
                        if task == "pointwise" else "none")
            elif "error" in model:
                text = model["error"]
            else:
                about = [model["source"] or "source not recorded"]
                if model["train_rows"] is not None:
                    about.append(f"{model['train_rows']} examples, {model['live_pairs']} of them your own")
                text = f"{model['file']} ({', '.join(about)})"
            print(f"Reward {task}: {text}")
        if "scoring" in report:
            scoring = report["scoring"]
            text = f"{scoring['scored']} replies scored since the window opened"
            if scoring["failed"]:
                text += f"; {scoring['failed']} could not be (last: {scoring['last_error']})"
            print(f"Scoring:  {text}")
    return 0 if report["database"]["ok"] and report["model"]["ok"] else 1


def _store_status() -> tuple[dict, list, dict | None]:
    """``store.status()`` (with ``app_open``), the last nightly run and how scoring goes in
    the window (None without one): from the store, or, while the Glance window holds it,
    from the window over its private socket."""
    try:
        with FeedbackStore.open_existing() as store:
            return dict(store.status(), app_open=False), store.training.runs(1), None
    except DatabaseLocked as locked:
        from align.ipc import ask_open_app
        answer = ask_open_app(glance_home(), lambda app: app.request("status"), "its status", locked)
        return dict(answer["status"], app_open=True), answer["runs"], answer.get("scoring")


def _nightly(runs: list) -> dict:
    """The last nightly run (when, outcome, its one sentence) and the adapter the chat
    uses: whether the loop from reading to the model runs."""
    from align.adapters import adapters_dir, in_use, manifest, read_active
    from align.locks import as_seen_now
    from feedback_store.times import local_minute
    last = None
    runs = as_seen_now(runs, glance_home())
    if runs:
        run = runs[0]
        last = {"started": local_minute(run["started_wall_ns"]), "status": run["status"],
                "message": run["message"]}
    version = read_active(adapters_dir(glance_home())).get("version")
    trained_for = ((manifest(adapters_dir(glance_home()), version) or {}).get("base") or {}).get("name") \
        if version else None
    return {"last_run": last, "active_adapter": version, "adapter_model": trained_for,
            "in_use": in_use(adapters_dir(glance_home()))}


def _reward_models() -> dict:
    """The reward models the app and the nightly job would use (the newest file of each
    task that loads), or why there is none. Optional: never a doctor failure."""
    from align.scoring import model_dir, newest_model
    directory = model_dir(glance_home())
    report = {}
    for task in ("pointwise", "pairwise"):
        files = sorted(directory.glob(f"reward-{task}-*.json")) if directory.is_dir() else []
        model = newest_model(directory, task) if files else None
        if model is None:
            report[task] = ({"error": f"{len(files)} model files in {directory}, none loads"}
                            if files else None)
            continue
        report[task] = {"file": model.info["file"], "version": str(model.info.get("version")),
                        "source": model.info.get("source"),
                        "train_rows": model.metrics.get("train_rows"),
                        "live_pairs": model.info.get("live_pairs", 0),
                        "columns": len(model.names)}
    return report


def cmd_models(args) -> int:
    if args.models_command == "download":
        return _download_model(args)
    if args.models_command == "add":
        info = inspect_model(args.path)
        require_chat_template(info)        # as loading it would (it became the start model)
        with FeedbackStore.open() as store:
            store.models.remember(info)
        print(f"Added {info['name']} ({info['path']}); Glance now starts with it "
              "(`glance --model PATH` picks another).")
        return 0
    try:     # listing or removing makes no data folder (nothing was added without one)
        with FeedbackStore.open_existing() as store:
            return _list_or_remove_model(args, store)
    except NoGlanceData:
        return _list_or_remove_model(args, None)


def _list_or_remove_model(args, store) -> int:
    """``glance models list|remove``; ``store`` None: no data folder yet."""
    try:
        default = str(default_model_path())
    except ModelError as error:          # the others are listed all the same
        default = None
        if args.models_command == "list":
            print(f"  (no embedded default: {error})")
    listed = store.models.list() if store is not None else []
    if args.models_command == "list":
        # "*": the model Glance starts with (the last one used that still exists).
        try:
            current = choose_model(store) if store is not None else default
        except ModelError:
            current = None
        if default:
            print(f"{'*' if current == default else ' '} {default} (embedded default)")
        for model in listed:
            if model["path"] == default:
                continue
            missing = "" if os.path.exists(model["path"]) else "  (file missing)"
            print(f"{'*' if model['path'] == current else ' '} {model['path']}  "
                  f"[{model['architecture']}, ctx {model['context_length']}, "
                  f"{model['size_bytes'] / 2**20:.0f} MiB]{missing}")
        return 0
    path = str(Path(args.path).expanduser().resolve())
    if path not in {model["path"] for model in listed}:
        if path == default:      # listed with the others, but it comes with Glance
            print(f"glance: {args.path} is the embedded default model, which comes with Glance "
                  "and cannot be removed from the list (another one added becomes the start model).",
                  file=sys.stderr)
        else:
            print(f"glance: {args.path} is not in the list (`glance models list`).", file=sys.stderr)
        return 2
    store.models.forget(path)
    print(f"Removed {path} from the list; the file stays. Glance starts with "
          f"{Path(choose_model(store)).name}.")
    return 0


def _download_model(args) -> int:
    """Without the database: it is held only to remember the file, not for the minutes
    or hours of the download (the window and the nightly job waited, then gave up)."""
    from .download import DownloadError, check_request, download_model
    try:
        check_request(args.repo, args.file, args.sha256)   # before a database is made
    except DownloadError as error:
        print(f"glance: {error}", file=sys.stderr)
        return 2
    FeedbackStore.open().close()        # the folder and the database are usable: say so now

    def progress(done, total):
        if total:
            print(f"\r{done / 2**20:.1f} / {total / 2**20:.1f} MiB", end="", flush=True)
    try:
        path = download_model(args.repo, args.file, glance_home() / "models",
                              revision=args.revision, sha256=args.sha256, progress=progress)
    except DownloadError as error:  # unreachable hub, 404, short body, checksum
        print(f"\nglance: {error}", file=sys.stderr)
        return 2
    except OSError as error:        # a full disk: the part downloaded is kept for resuming
        print(f"\nglance: the download stopped: {error.strerror or error}. Free some space "
              "and run the same command again to resume.", file=sys.stderr)
        return 1
    print()
    try:
        info = inspect_model(path)
        require_chat_template(info)     # as `models add` does: remembered, it became the start model
    except ModelError as error:
        print(f"glance: {error} The file is kept at {path} (`glance models add` takes it "
              "once it is usable, or delete it).", file=sys.stderr)
        return 2
    with FeedbackStore.open() as store:
        store.models.remember(info)
    print(f"Downloaded {info['name']} to {path}")
    return 0


def cmd_data(args) -> int:
    from feedback_store.privacy import delete_everything, export_all
    if args.data_command == "delete" and args.all:
        if not args.yes:
            print("glance: `data delete --all` destroys every conversation, signal, adapter "
                  "and the key. Add --yes to confirm.", file=sys.stderr)
            return 2
        kept = delete_everything(glance_home())
        print(f"Deleted everything Glance kept under {glance_home()}.")
        if kept:
            print(f"Left there, because Glance did not make them: "
                  f"{', '.join(path.name for path in kept)}.")
        return 0
    if args.data_command == "status":
        try:
            status, _, _ = _store_status()
        except NoGlanceData:     # nothing is wrong: the first chat makes it (doctor says so too)
            print(json.dumps({"data_dir": str(glance_home()), "exists": False}) if args.json else
                  f"No Glance data in {glance_home()} yet (the first chat makes it).")
            return 0
        if args.json:
            print(json.dumps(status))
            return 0
        print(f"Data dir:   {status['data_dir']}" + ("  (open in the Glance window, which answered)"
                                                     if status["app_open"] else ""))
        print(f"Encryption: {'on (AES-GCM)' if status['encryption'] else 'off'}; key in "
              f"{'the system keyring' if status['key_storage'] == 'keyring' else 'a 0600 key file'}")
        for name, decision in status["consents"].items():
            state = "not decided" if decision is None else ("on" if decision["on"] else "off")
            print(f"Consent {name:12} {state}")
        for table, rows in status["counts"].items():
            print(f"  {table:18} {rows} rows")
        return 0
    if args.data_command == "export":
        with FeedbackStore.open_existing() as store:
            print(f"Exported to {export_all(store, args.directory)}")
        return 0
    # A deletion runs to its end: the rows go in one transaction, then the file is rewritten
    # under a new key, which nothing can stop halfway either. Ctrl-C used to end the command
    # with no word of what was done (it was all done).
    with FeedbackStore.open_existing() as store:
        if store.conversations.get(args.conversation) is None:
            print(f"glance: no conversation with id {args.conversation}.", file=sys.stderr)
            return 2
        from .session import delete_conversation
        with _ctrl_c_stops(threading.Event(), say="glance: finishing the deletion first (it "
                           "is not stopped halfway)."):
            delete_conversation(store, args.conversation)
    print(f"Deleted conversation {args.conversation} and everything derived from it "
          "(personal adapters and reward models that learned from it are retired).")
    return 0


def cmd_consent(args) -> int:
    with FeedbackStore.open() as store:
        store.consent.set(args.signal, args.state == "on")
        print(f"Consent for {args.signal}: {args.state}")
    return 0


if __name__ == "__main__":
    sys.exit(entry())
