"""`align`: the training command group (reward model; nightly DPO comes later).

Heavy modules (DuckDB readers, scikit-learn) are imported inside the command functions,
so `align --help` stays instant. ``--json`` commands print one JSON object as the last
line of stdout (keys: ../shared/BENCH.md).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path


def _single_threaded() -> None:
    """The machine is shared and the models are small: BLAS threads only fight each other
    (measured: one evaluation fold 10x faster with one thread than with the default)."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, nothing to limit
        pass


def _default_model_dir() -> str:
    from feedback_store.paths import glance_home
    return str(glance_home() / "reward")


def cmd_reward_train(args) -> int:
    _single_threaded()
    from feedback_store import DatabaseLocked, FeedbackStore, NoGlanceData, StoreError
    from .research import ResearchSchemaMissing
    from .train import TASKS, live_tables, train_data

    tasks = TASKS if args.task == "both" else (args.task,)
    out = args.out or _default_model_dir()
    # Bad arguments are refused before anything is read or fitted.
    problem = _not_a_folder(out, "--out") or (args.ifllm and _bad_study_folder(args.ifllm))
    if problem:
        print(f"align reward train: {problem}", file=sys.stderr)
        return 2
    try:
        # The user's own labels (with the personalisation consent), plus the prior asked for.
        live, research, consent_off = None, None, False
        try:
            with FeedbackStore.open_existing() as store:
                live = live_tables(store)
                consent_off = not store.consent.is_on("personalise")
                if args.research:
                    from .research import read_research
                    research = read_research(store)
                    if not research.pairwise_turns() and not research.pointwise_pairs():
                        raise StoreError("No study data is imported: `align import-ifllm DIR` "
                                         "first, or give the folder with --ifllm DIR.")
        except DatabaseLocked as locked:
            if args.research:
                raise
            live, consent_on = _labels_from_app(locked)  # Glance is open: it computes them
            consent_off = not consent_on
        except NoGlanceData:
            if args.research:
                raise StoreError("No study data is imported (align import-ifllm DIR), and no "
                                 "Glance data at all yet.") from None
            # Nothing of the user's yet: the study alone (a database is not made for it).
        if args.ifllm:
            from .ifllm import read_ifllm
            research = read_ifllm(args.ifllm)
        written = train_data(research, out, tasks, args.features,
                             source="research" if args.research else "ifllm", live=live,
                             consent_off=consent_off)
    except (StoreError, ResearchSchemaMissing, ValueError, OSError) as error:
        print(f"align reward train: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(written))
    else:
        for task, info in written.items():
            if "skipped" in info:
                print(f"{task}: not trained: {info['skipped']}")
                continue
            why = ""
            if not info["live_pairs"]:      # (a bare "0 of them your own" left the user guessing)
                why = (": personalisation is off (glance consent set personalise on)" if consent_off
                       else ": a label counts once its replies were shown and read in the window")
            print(f"{task}: {info['path']} ({info['train_rows']} examples from "
                  f"{info['train_users']} users, {info['live_pairs']} of them your own{why}, "
                  f"{info['columns']} columns, C={info['C']})")
    return 0


def cmd_reward_scores(args) -> int:
    """What the reward model made of the replies you read, newest first."""
    from feedback_store import DatabaseLocked, FeedbackStore, NoGlanceData, StoreError
    from .scoring import recent_scores
    if not 1 <= args.limit <= 100_000:
        print("align reward scores: --limit must be between 1 and 100000", file=sys.stderr)
        return 2
    try:
        try:
            with FeedbackStore.open_existing() as store:
                scores = recent_scores(store, args.limit)
        except NoGlanceData:
            scores = []                      # (reading them made a database and a key)
        except DatabaseLocked as locked:
            from feedback_store.paths import glance_home
            from .ipc import ask_open_app
            scores = ask_open_app(glance_home(), lambda app: app.request(
                "reward_scores", limit=args.limit)["scores"], "the scores", locked)   # Glance is open
    except (StoreError, OSError) as error:
        print(f"align reward scores: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"scores": scores}))
        return 0
    if not scores:
        print("No reply has been scored yet: replies are scored when they leave the screen, "
              "with the personalisation consent and a reward model (align reward train).")
        return 0
    from feedback_store.times import local_minute
    from .examples import column_words

    def start(text):
        text = " ".join((text or "").split())
        return text if len(text) <= 60 else text[:59] + "…"
    for score in scores:
        if not score["previous_message_id"]:
            against = "the first reply of its conversation, on its own"
        elif score["same_prompt"]:
            against = f"against another reply to it, “{start(score['previous'])}”"
        else:
            against = f"against the reply before it, “{start(score['previous'])}”"
        # With nothing before it, "better" has nothing to be better than: the model's
        # satisfaction with it, read on its own.
        verdict = ("P(satisfied, read on its own)" if not score["previous_message_id"]
                   else "P(this one better)")
        print(f"{local_minute(score['scored_wall_ns'])}  {score['title'] or 'Untitled'}\n"
              f"  you asked “{start(score['prompt'])}”\n"
              f"  this reply “{start(score['reply'])}”\n"
              f"  {against}\n"
              f"  {verdict} = {score['probability']:.2f}  (model {score['model']})")
        moved = [f"{value:+.2f} {column_words(name)}" for name, value in score["contributions"]
                 if round(value, 2)]
        if moved:
            print("  moved by: " + "; ".join(moved))
    return 0


def _labels_from_app(locked: Exception) -> tuple[dict, bool]:
    """The user's labelled rows, computed by the open app, and whether personalisation is on."""
    from feedback_store.paths import glance_home
    from .ipc import ask_open_app
    from .nightly import labels_from_app
    return ask_open_app(glance_home(), labels_from_app, "your labels", locked)


def cmd_import_ifllm(args) -> int:
    from feedback_store import FeedbackStore, NoGlanceData, StoreError
    from .research import ResearchSchemaMissing, import_ifllm, remove_research

    if not args.remove and not args.directory:
        print("align import-ifllm: give DIR (or --remove)", file=sys.stderr)
        return 2
    problem = None if args.remove else _bad_study_folder(args.directory)
    if problem:                         # a bad folder is a bad argument: before the store opens
        print(f"align import-ifllm: {problem}", file=sys.stderr)
        return 2
    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    began_wall_ns = time.time_ns()
    try:
        # Removing from a folder without a database: nothing to remove (opening made one).
        with (FeedbackStore.open_existing() if args.remove else FeedbackStore.open()) as store:
            if args.remove:
                result = remove_research(store, args.directory)
            else:
                result = import_ifllm(store, args.directory, progress=progress)
    except NoGlanceData:
        result = {"removed": {}}
    except (StoreError, ResearchSchemaMissing, ValueError) as error:
        print(f"align import-ifllm: {error}", file=sys.stderr)
        return 2                        # (as every align command refusing its input or a held database)
    except KeyboardInterrupt:
        # Once its one transaction is handed to the store's writer the import is finished,
        # not stopped halfway (the store's close waits for it): "stopped" misled.
        if args.remove or not _imported(args.directory, began_wall_ns):
            raise
        print(f"align import-ifllm: Ctrl-C came while {args.directory} was being written; the "
              "import was finished, not stopped halfway (`align import-ifllm --remove DIR` "
              "takes it out).", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(result))
    elif args.remove and not any(result["removed"].values()):
        print("Nothing to remove: " + (f"no import of the data in {args.directory} is stored "
                                       "(`align import-ifllm --remove` alone removes every import)."
                                       if args.directory else "no study data is imported."))
    elif args.remove:
        print("removed: " + ", ".join(f"{t} {n}" for t, n in result["removed"].items()))
    else:
        print(f"imported {args.directory} as {result['import_id']} in {result['seconds']} s"
              + (" (replacing the previous import of the same data)" if result["replaced_previous_import"] else ""))
        for part in ("read", "repaired", "dropped"):
            print(f"{part}: " + ", ".join(f"{k} {v}" for k, v in result[part].items()))
        print("written: " + ", ".join(f"{t} {n}" for t, n in result["written"].items()))
    return 0


def cmd_reward_evaluate(args) -> int:
    _single_threaded()
    from .evaluate import evaluate

    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    problem = _bad_study_folder(args.ifllm) or (args.holdout and _bad_study_folder(args.holdout))
    if problem:
        print(f"align reward evaluate: {problem}", file=sys.stderr)
        return 2
    try:
        result = evaluate(args.ifllm, args.holdout, seeds=args.seeds, folds=args.folds, progress=progress)
    except (ValueError, OSError) as error:      # IfllmFormatError is a ValueError
        print(f"align reward evaluate: {error}", file=sys.stderr)
        return 2
    if result.get("holdout_shared_workers"):
        print(f"align reward evaluate: warning: {result['holdout_shared_workers']} workers of "
              f"{args.holdout} are also in {args.ifllm}; they were left out of the holdout "
              f"figures ({result['holdout_pairs']} pairs of unseen people remain)", file=sys.stderr)
    print(json.dumps(result) if args.json else _evaluation_table(result))
    return 0


def _evaluation_table(result: dict) -> str:
    """`align reward evaluate` without --json: the accuracies as a table (it printed the
    whole JSON object, indented, either way)."""
    def cell(entry: dict | None) -> str:
        if not entry or entry.get("mean") is None:
            return "-"
        spread = f" ± {entry['sd']:.3f}" if entry.get("sd") is not None else ""
        return f"{entry['mean']:.3f}{spread}"
    columns = (("grouped", "grouped by worker"), ("ungrouped", "ungrouped"),
               ("holdout", "holdout"), ("within_user", "within user"))
    lines = []
    for title, block in ((f"pairwise: {result['pairs']} pairs from {result['workers']} workers",
                          result),
                         (f"pointwise: {result['pointwise']['rows']} turns, majority class "
                          f"{result['pointwise']['majority'] or 0:.3f}", result["pointwise"])):
        lines += ["", title] if lines else [title]
        if "skipped" in block:
            lines.append(f"  not evaluated: {block['skipped']}")
            continue
        lines.append(f"  {'':15}" + "".join(f"{label:>20}" for _, label in columns))
        for feature_set in ("text", "implicit", "text_implicit"):
            lines.append(f"  {feature_set:15}" + "".join(
                f"{cell(block[feature_set].get(key)):>20}" for key, _ in columns))
    lines.append("(accuracy, mean ± sd over folds, within user over users; --json prints "
                 "every figure)")
    return "\n".join(lines)


def _imported(directory, since_wall_ns: int) -> bool:
    """Whether the study folder ``directory`` (as it is now) was imported since ``since_wall_ns``."""
    from feedback_store import FeedbackStore, StoreError
    from .research import folder_fingerprint, imports
    try:
        with FeedbackStore.open_existing() as store:
            return any(row["id"] == folder_fingerprint(directory)
                       and row["imported_wall_ns"] >= since_wall_ns for row in imports(store))
    except StoreError:     # none, or still held (a second Ctrl-C stopped the close): not known
        return False


def _not_a_folder(path, flag: str) -> str | None:
    """Why ``path`` cannot be the folder models are written to (None when it can): found
    only when the files were written, it cost the whole fit."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{flag} {path} is a file, not a folder"
    existing = path
    while not existing.exists():         # the folder is made with its parents
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {path} cannot be made: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {path}: no permission to write in {existing}"
    return None


def _bad_study_folder(path) -> str | None:
    """Why ``path`` is not an IFLLM-format folder (None when it is one)."""
    from .ifllm import check_folder
    try:
        check_folder(path)
    except (ValueError, OSError) as error:
        return str(error)
    return None


def cmd_ifllm_subset(args) -> int:
    from .ifllm import write_subset

    workers = []
    if args.workers:
        workers += [w for w in args.workers.split(",") if w]
    if args.workers_file:
        try:
            text = Path(args.workers_file).read_text()
        except (OSError, UnicodeDecodeError) as error:
            print(f"align ifllm-subset: cannot read --workers-file {args.workers_file}: "
                  f"{getattr(error, 'strerror', None) or error}", file=sys.stderr)
            return 2
        try:
            workers += json.loads(text)["workers"]
        except (ValueError, KeyError, TypeError):
            workers += [line.strip() for line in text.splitlines() if line.strip()]
    if not workers:
        print("align ifllm-subset: give --workers or --workers-file", file=sys.stderr)
        return 2
    try:
        counts = write_subset(args.source, args.target, workers, exclude=args.exclude)
    except (ValueError, OSError) as error:
        print(f"align ifllm-subset: {error}", file=sys.stderr)
        return 2
    if "warning" in counts:
        print(f"align ifllm-subset: {counts['warning']}", file=sys.stderr)
    print(json.dumps(counts))
    return 0


def _folder(text: str) -> str:
    """A folder argument: "" (an unset shell variable) gave no holdout at all, or wrote the
    models to the default folder, without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="Glance's on-device learning (reward model, nightly DPO).")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    reward = commands.add_parser("reward", help="reward model from reading behaviour")
    parser.reward_parser = reward         # `align reward` alone: its help, as an error
    reward_commands = reward.add_subparsers(dest="reward_command", metavar="SUBCOMMAND")
    train = reward_commands.add_parser("train", help="fit and save reward models")
    prior = train.add_mutually_exclusive_group()  # one prior: a folder or what was imported
    prior.add_argument("--ifllm", metavar="DIR", type=_folder,
                       help="add an IFLLM-format folder as a research prior to your own picks")
    prior.add_argument("--research", action="store_true",
                       help="add the research data imported into the store (never by default)")
    train.add_argument("--task", choices=("pairwise", "pointwise", "both"), default="both")
    train.add_argument("--features", choices=("text", "implicit", "text_implicit"),
                       default="text_implicit")
    train.add_argument("--out", metavar="DIR", type=_folder,
                       help="where model files go (default: GLANCE_HOME/reward); the newest 3 "
                            "per task there are kept, older ones removed")
    train.add_argument("--json", action="store_true")
    train.set_defaults(func=cmd_reward_train)

    evaluate = reward_commands.add_parser("evaluate", help="accuracy on unseen workers")
    evaluate.add_argument("--ifllm", metavar="DIR", type=_folder, required=True, help="IFLLM-format folder")
    evaluate.add_argument("--holdout", metavar="DIR2", type=_folder, help="train on DIR, test on DIR2")
    evaluate.add_argument("--seeds", type=int, default=5)
    evaluate.add_argument("--folds", type=int, default=5)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_reward_evaluate)

    scores = reward_commands.add_parser("scores", help="what the reward model made of the "
                                        "replies you read, newest first")
    scores.add_argument("--limit", type=int, default=10, help="how many (default 10)")
    scores.add_argument("--json", action="store_true")
    scores.set_defaults(func=cmd_reward_scores)

    research = commands.add_parser("import-ifllm", help="import an IFLLM folder as research data")
    research.add_argument("directory", nargs="?", metavar="DIR")
    research.add_argument("--remove", action="store_true",
                          help="remove imported research data (all of it, or DIR's)")
    research.add_argument("--json", action="store_true")
    research.set_defaults(func=cmd_import_ifllm)

    subset = commands.add_parser("ifllm-subset", help="copy some workers of an IFLLM folder")
    subset.add_argument("source")
    subset.add_argument("target")
    subset.add_argument("--workers", help="comma-separated worker ids")
    subset.add_argument("--workers-file", help='JSON with "workers" or one id per line')
    subset.add_argument("--exclude", action="store_true", help="copy everyone except them")
    subset.set_defaults(func=cmd_ifllm_subset)
    from . import nightly_cli
    nightly_cli.register(parser, commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `align` command."""
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        from feedback_store.paths import output_reader_gone
        code = output_reader_gone()
    return code


def _main(argv: list[str] | None) -> int:
    # As `glance`: whatever Glance writes is the user's alone. Reward models trained on a
    # fresh GLANCE_HOME (no store opened, which sets it too) were left readable by all.
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    from feedback_store.paths import not_utf8_problem
    problem = not_utf8_problem(args)
    if problem:
        print(f"align: {problem}", file=sys.stderr)
        return 2
    from . import nightly_cli
    if nightly_cli.wants_nightly(args):
        if args.command is not None:       # it ran the training and ignored the command
            print(f"align: --nightly is a command of its own; run `align {args.command} …` "
                  "without it", file=sys.stderr)
            return 2
        return nightly_cli.run_nightly_command(args)
    stray = nightly_cli.stray_nightly_options(args)
    if stray:
        print(f"align: {', '.join(stray)} only go with --nightly (a command's own options come "
              "after it, e.g. `align status --json`)", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "reward" and getattr(args, "reward_command", None) is None:
        parser.reward_parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except PermissionError as error:
        from feedback_store.errors import permission_message
        print(f"align: {permission_message(error)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, RuntimeError) as error:   # Ctrl-C: a traceback before
        from feedback_store.errors import interrupted
        if not interrupted(error):
            raise
        print("align: stopped (what was written is kept whole).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
