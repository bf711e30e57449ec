"""The nightly-training commands of ``align`` (registered by align/cli.py):

    align --nightly [--include-imported] [--max-pairs N] [--json]
    align status [--json]
    align adapters list [--json] | adapters use VERSION|base [--model FILE] [--json]
    align rollback [--model FILE] [--json]
    align schedule install|remove|status [--at HH:MM] [--json]

torch, trl and DuckDB are imported inside the commands, so ``align --help`` stays fast.
``--json`` prints one object as the last line of stdout (keys: shared BENCH.md).
"""
import argparse
import json
import shlex
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser, subcommands) -> None:
    group = parser.add_argument_group("nightly training")
    group.add_argument("--nightly", action="store_true",
                       help="train a personal adapter on consented conversations now")
    group.add_argument("--include-imported", action="store_true",
                       help="also learn from imported research data (never by default)")
    group.add_argument("--max-pairs", type=_positive, metavar="N",
                       help="train on at most N pairs (the most certain first)")
    group.add_argument("--skip-on-battery", action="store_true", help="do nothing on battery power")
    group.add_argument("--skip-if-active", type=_seconds, metavar="SECONDS",
                       help="do nothing if the app saw you within SECONDS")
    group.add_argument("--json", dest="nightly_json", action="store_true",
                       help="with --nightly: print the result as JSON")

    status = subcommands.add_parser("status", help="active adapter, versions and recent runs")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    versions = subcommands.add_parser("adapters", help="personal adapter versions")
    versions_commands = versions.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND")
    listing = versions_commands.add_parser("list", help="list the kept versions")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_adapters_list)
    use = versions_commands.add_parser(
        "use", help="answer with a kept version again, or with the base model ('base')")
    use.add_argument("version", metavar="VERSION|base")
    use.add_argument("--model", metavar="FILE",
                     help="with 'base': the model to put back on its base (default: the "
                          "model published or rolled back last)")
    use.add_argument("--json", action="store_true")
    use.set_defaults(func=cmd_adapters_use)
    versions.set_defaults(func=cmd_adapters_list, json=False)

    rollback = subcommands.add_parser("rollback", help="go back to the previous adapter "
                                      "(or the base model)")
    rollback.add_argument("--model", metavar="FILE",
                          help="the model whose adapter to step back (its file name or "
                               "path; default: the model published or rolled back last)")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=cmd_rollback)

    schedule = subcommands.add_parser("schedule", help="run the nightly training every night")
    schedule.add_argument("action", choices=("install", "remove", "status"))
    schedule.add_argument("--at", default="03:30", type=_time_of_day, metavar="HH:MM",
                          help="time of day (default 03:30)")
    schedule.add_argument("--kind", choices=("auto", "systemd", "cron", "launchd", "windows"),
                          default="auto")
    schedule.add_argument("--json", action="store_true")
    schedule.set_defaults(func=cmd_schedule)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"wants a number of seconds of at least 0, not {text!r}")
    return value


def _time_of_day(text: str) -> str:
    """``--at``, checked as the schedule reads it, so a bad time is a usage error (2)."""
    from .schedule import ScheduleConfig, ScheduleError
    try:
        ScheduleConfig(at=text).time()
    except ScheduleError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--at ")) from None
    return text


def _data_dir():
    from feedback_store.paths import glance_home
    return glance_home()


def wants_nightly(args) -> bool:
    return bool(getattr(args, "nightly", False))


def stray_nightly_options(args) -> list[str]:
    """The options of ``align --nightly`` given without it (they would do nothing)."""
    given = {"--include-imported": getattr(args, "include_imported", False),
             "--max-pairs": getattr(args, "max_pairs", None) is not None,
             "--skip-on-battery": getattr(args, "skip_on_battery", False),
             "--skip-if-active": getattr(args, "skip_if_active", None) is not None,
             "--json (before a command)": getattr(args, "nightly_json", False)}
    return [] if wants_nightly(args) else [name for name, on in given.items() if on]


def run_nightly_command(args) -> int:
    from .nightly import NightlyConfig, run_nightly

    config = NightlyConfig(data_dir=_data_dir(), include_imported=args.include_imported,
                           max_pairs=args.max_pairs, skip_on_battery=args.skip_on_battery,
                           skip_if_active_s=args.skip_if_active)
    try:
        result = run_nightly(config)
    except ImportError as error:
        print(f"align --nightly: training needs the 'train' extra ({error}). "
              "Install it with: pip install -e '.[train]'", file=sys.stderr)
        return 1
    if args.nightly_json:
        print(json.dumps(result, default=str))
    else:
        print(result.get("message", result["status"]))
        reward = result.get("reward_models")
        if reward:
            tasks = ", ".join(reward.get("written", {}))
            print(f"Reward models: {reward['status']}" + (f" ({tasks})" if tasks else "")
                  + (f": {reward['reason']}" if reward.get("reason") else ""))
    return 1 if result["status"] == "failed" else 0


def cmd_status(args) -> int:
    from .nightly import status
    result = status(_data_dir())
    if args.json:
        print(json.dumps(result, default=str))
        return 1 if result.get("runs_error") else 0
    used = result.get("in_use") or {}
    if used:        # each model answers with its own version
        for model, version in used.items():
            print(f"adapter for {model}: {version or 'none (base model)'}")
    else:
        print("active adapter: none (base model)")
    if result.get("active_file_damaged"):
        print("  (adapters/active.json is damaged, so the chat uses the base model until "
              "the next adapter is published)")
    print(f"kept versions: {', '.join(v['version'] for v in result['versions']) or 'none'}")
    if result["running"]:
        print("a nightly training is running now")
    for run in result.get("runs") or []:
        print(f"run {run['id']}: {run['status']} — {run.get('message') or ''}")
    if result.get("no_data"):
        print(result["no_data"])
    if result.get("runs_error"):
        # The adapters above are read from their files; the runs need the database.
        print(f"align status: the runs could not be read: {result['runs_error']}", file=sys.stderr)
        return 1
    return 0


def cmd_adapters_list(args) -> int:
    from .adapters import adapters_dir, list_versions, trained_pairs
    versions = list_versions(adapters_dir(_data_dir()))
    if getattr(args, "json", False):
        print(json.dumps({"versions": versions}, default=str))
        return 0
    if not versions:
        print("No adapter yet: Glance answers with the base model.")
    for version in versions:
        gate = version.get("gate") or {}
        accuracy = gate.get("implicit_reward_accuracy")
        print(f"{'*' if version['active'] else ' '} {version['version']}  "
              f"{(version.get('base') or {}).get('name', '?')}  pairs {trained_pairs(version)}  "
              f"held-out accuracy {accuracy if accuracy is None else round(accuracy, 2)}")
    return 0


def cmd_adapters_use(args) -> int:
    """A rollback could not be undone: the version stepped back from stayed unused, and the
    next night, with nothing new to learn, published nothing."""
    from .adapters import AdapterConfig, adapters_dir, line, manifest, models_with_versions, set_active
    from .ipc import tell_app_adapters_changed
    root = adapters_dir(_data_dir())
    version = None if args.version == "base" else args.version
    known = ", ".join(models_with_versions(root)) or "none"
    if version is None:
        base = line(root, args.model)
        if base is None and known == "none":
            message = "No adapter yet: Glance already answers with the base model."
            print(json.dumps({"active": None, "model": None, "message": message})
                  if args.json else message)
            return 0
        if base is None:
            print("align adapters use: " + (
                f"no adapter version was trained on {Path(args.model).name!r}" if args.model else
                "say which model with --model") + f" (models with versions: {known})",
                file=sys.stderr)
            return 2
    else:
        base = (manifest(root, version) or {}).get("base")
        if args.model is not None and base is not None and base.get("name") != Path(args.model).name:
            print(f"align adapters use: {version} was trained on {base.get('name')}, not on "
                  f"{Path(args.model).name}", file=sys.stderr)
            return 2
    try:
        set_active(AdapterConfig(root), version, args.model if version is None else None)
    except KeyError as error:       # no such version
        print(f"align adapters use: {error.args[0]}", file=sys.stderr)
        return 2
    tell_app_adapters_changed(_data_dir())          # an open window's label follows
    model = (base or {}).get("name")
    if args.json:
        print(json.dumps({"active": version, "model": model}))
    else:
        print(f"Now using {version}" if version else "Now using the base model (no adapter)",
              end=f" for {model}.\n" if model else ".\n")
    return 0


def cmd_rollback(args) -> int:
    from .adapters import AdapterConfig, adapters_dir, in_use, models_with_versions, rollback
    from .ipc import tell_app_adapters_changed
    root = adapters_dir(_data_dir())
    if not root.is_dir() and args.model is not None:    # (its lock made the folder)
        print(f"align rollback: No adapter version was trained on {Path(args.model).name!r}. "
              "(models with versions: none)", file=sys.stderr)
        return 2
    if not root.is_dir():     # (its lock file made the folder, in a data folder never used)
        message = "No adapter is active: Glance already answers with the base model."
        print(json.dumps({"active": None, "model": args.model, "message": message})
              if args.json else message)
        return 0
    before = in_use(root)
    try:
        active = rollback(AdapterConfig(root), args.model)
    except KeyError as error:       # no version of that model
        known = ", ".join(models_with_versions(root)) or "none"
        print(f"align rollback: {error.args[0]} (models with versions: {known})", file=sys.stderr)
        return 2
    except ValueError as error:     # nothing active: already on the base model
        others = {name: v for name, v in before.items() if v}
        message = str(error) + "".join(f" {name} answers with {v}: align rollback --model {shlex.quote(name)}."
                                       for name, v in others.items())
        print(json.dumps({"active": None, "model": args.model, "message": message})
              if args.json else message)
        return 0
    tell_app_adapters_changed(_data_dir())          # an open window's label follows
    after = in_use(root)
    model = next((name for name in after if before.get(name) != after[name]), args.model)
    if args.json:
        print(json.dumps({"active": active, "model": model}))
        return 0
    print(f"Now using {active}" if active else "Now using the base model (no adapter)",
          end=f" for {model}.\n" if model else ".\n")
    return 0


def cmd_schedule(args) -> int:
    from . import schedule
    try:
        result = getattr(schedule, args.action)(schedule.ScheduleConfig(at=args.at, kind=args.kind))
    except schedule.ScheduleError as error:
        print(f"align schedule {args.action}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(result["message"])
    # Written but not activated (the tool failed or is missing): nothing will run it.
    return 1 if args.action == "install" and not result["activated"] else 0
