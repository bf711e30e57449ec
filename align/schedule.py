"""Stage 6: run ``align --nightly`` every night, with whatever the system schedules with.

    align schedule install [--at 03:30]   |   align schedule remove   |   align schedule status

============  ===================================================  ========================
system        what is written                                       a missed night
============  ===================================================  ========================
Linux         systemd user units: glance-nightly.service + .timer  ``Persistent=true``: runs
(systemd)     in $XDG_CONFIG_HOME/systemd/user (nice 19, idle      at the next boot/login
              CPU and I/O class), enabled with systemctl --user
Linux         one crontab line, marked ``# glance-nightly``         skipped (cron has no
(no systemd)  (copy kept in $XDG_CONFIG_HOME/glance/nightly.cron)   catch-up)
macOS         ~/Library/LaunchAgents/org.glance.nightly.plist      runs on wake if the Mac
              (Background, low-priority I/O, nice 19)              slept through it
Windows       a Task Scheduler XML (%LOCALAPPDATA%\\Glance),         ``StartWhenAvailable``
              imported with schtasks; not on batteries
============  ===================================================  ========================

The command is this Python running ``-m align.cli --nightly --skip-on-battery``, with
GLANCE_HOME passed along when set. Activation uses the system's own tool
(systemctl, crontab, launchctl, schtasks); when that tool is missing the files are still
written and the result says what is left to do, except for cron: without `crontab` nothing
is written (a copy of the line would make `status` say "scheduled" where nothing runs).
"""
from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

NAME = "glance-nightly"
LAUNCHD_LABEL = "org.glance.nightly"
WINDOWS_TASK = "Glance Nightly"
CRON_MARK = "# glance-nightly"


class ScheduleError(RuntimeError):
    pass


@dataclass
class ScheduleConfig:
    at: str = "03:30"                      # HH:MM local time
    kind: str = "auto"                     # auto | systemd | cron | launchd | windows
    python: str = field(default_factory=lambda: sys.executable)
    arguments: tuple = ("-m", "align.cli", "--nightly", "--skip-on-battery")
    activate: bool = True                  # False: write/remove the files only (tests)

    def time(self) -> tuple[int, int]:
        try:
            hour, minute = (int(part) for part in self.at.split(":"))
        except ValueError:
            raise ScheduleError(f"--at wants HH:MM, not {self.at!r}") from None
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ScheduleError(f"--at wants a time of day, not {self.at!r}")
        return hour, minute

    def command(self) -> list[str]:
        return [self.python, *self.arguments]

    def environment(self) -> dict:
        # The folder as resolved now: a relative GLANCE_HOME, or an XDG_DATA_HOME the
        # scheduler does not have, made the job train on another folder, out of sight.
        from feedback_store.paths import glance_home
        return {"GLANCE_HOME": str(glance_home())}


# --- where things go -----------------------------------------------------------------------------
def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def systemd_dir() -> Path:
    return config_home() / "systemd" / "user"


def launchd_plist() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def windows_xml() -> Path:
    return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "Glance" / f"{NAME}.xml"


def cron_copy() -> Path:
    return config_home() / "glance" / "nightly.cron"


def detect() -> str:
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform == "win32":
        return "windows"
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        return "systemd"
    return "cron"


# --- the files -----------------------------------------------------------------------------------
def _systemd_quote(argument: str) -> str:
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def systemd_units(config: ScheduleConfig) -> dict[str, str]:
    hour, minute = config.time()
    environment = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n"
                          for k, v in config.environment().items())
    service = (
        "[Unit]\n"
        "Description=Glance nightly personalisation (align --nightly)\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={' '.join(_systemd_quote(a) for a in config.command())}\n"
        f"{environment}"
        "Nice=19\n"
        "CPUSchedulingPolicy=idle\n"
        "IOSchedulingClass=idle\n")
    timer = (
        "[Unit]\n"
        "Description=Run Glance's nightly personalisation\n\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {hour:02d}:{minute:02d}:00\n"
        "Persistent=true\n"
        "RandomizedDelaySec=10min\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n")
    return {f"{NAME}.service": service, f"{NAME}.timer": timer}


def cron_line(config: ScheduleConfig) -> str:
    hour, minute = config.time()
    environment = " ".join(f"{k}={shlex.quote(v)}" for k, v in config.environment().items())
    command = " ".join(shlex.quote(a) for a in config.command())
    return (f"{minute} {hour} * * * {environment + ' ' if environment else ''}nice -n 19 "
            f"{command} >/dev/null 2>&1 {CRON_MARK}")


def launchd_plist_data(config: ScheduleConfig) -> bytes:
    hour, minute = config.time()
    plist = {"Label": LAUNCHD_LABEL, "ProgramArguments": config.command(),
             "StartCalendarInterval": {"Hour": hour, "Minute": minute},
             "ProcessType": "Background", "LowPriorityIO": True, "Nice": 19,
             "RunAtLoad": False}
    if config.environment():
        plist["EnvironmentVariables"] = config.environment()
    return plistlib.dumps(plist)


def windows_task_xml(config: ScheduleConfig) -> str:
    hour, minute = config.time()
    command, *arguments = config.command()
    arguments_text = " ".join(f'"{a}"' if " " in a else a for a in arguments)
    environment = config.environment()
    if environment:   # Task Scheduler has no environment block: go through cmd /c set
        sets = " && ".join(f'set "{k}={v}"' for k, v in environment.items())
        arguments_text = f'/c {sets} && "{command}" {arguments_text}'
        command = "cmd.exe"
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>Glance nightly personalisation (align --nightly)</Description>
  </RegistrationInfo>
  <Triggers>
    <CalendarTrigger>
      <StartBoundary>2026-01-01T{hour:02d}:{minute:02d}:00</StartBoundary>
      <Enabled>true</Enabled>
      <ScheduleByDay><DaysInterval>1</DaysInterval></ScheduleByDay>
    </CalendarTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author"><LogonType>InteractiveToken</LogonType><RunLevel>LeastPrivilege</RunLevel></Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>true</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>true</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <ExecutionTimeLimit>PT4H</ExecutionTimeLimit>
    <Priority>7</Priority>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(command)}</Command>
      <Arguments>{escape(arguments_text)}</Arguments>
    </Exec>
  </Actions>
</Task>
"""


# --- install / remove / status ---------------------------------------------------------------------
def _run(argv: list[str], stdin: str | None = None, enabled: bool = True) -> tuple[bool, str]:
    if not enabled:
        return False, "activation not asked for"
    if shutil.which(argv[0]) is None:
        return False, f"{argv[0]} not found"
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return False, str(error)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        temporary.write_text(data)
    else:
        temporary.write_bytes(data)
    os.replace(temporary, path)


def _crontab_without_ours() -> tuple[list[str], bool]:
    ok, text = _run(["crontab", "-l"])
    if not ok and "not found" in text and shutil.which("crontab") is None:
        raise ScheduleError("cron is not installed (there is no crontab command): install it, "
                            "use `--kind systemd` where systemd's user timers work, or run "
                            "`align --nightly` from your own scheduler. Nothing was written.")
    lines = text.splitlines() if ok else []
    return [line for line in lines if CRON_MARK not in line], any(CRON_MARK in l for l in lines)


def install(config: ScheduleConfig) -> dict:
    kind = detect() if config.kind == "auto" else config.kind
    config.time()
    files, steps = [], []
    if kind == "systemd":
        for name, text in systemd_units(config).items():
            _write(systemd_dir() / name, text)
            files.append(str(systemd_dir() / name))
        steps.append(_run(["systemctl", "--user", "daemon-reload"], enabled=config.activate))
        steps.append(_run(["systemctl", "--user", "enable", "--now", f"{NAME}.timer"],
                          enabled=config.activate))
    elif kind == "cron":
        line = cron_line(config)
        # Asked before the copy is written: written first, `status` then said "scheduled"
        # on a machine without cron, where nothing would ever run it.
        kept, _ = _crontab_without_ours() if config.activate else ([], False)
        _write(cron_copy(), line + "\n")
        files.append(str(cron_copy()))
        if config.activate:
            steps.append(_run(["crontab", "-"], stdin="\n".join(kept + [line]) + "\n"))
        else:
            steps.append(_run(["crontab"], enabled=False))
    elif kind == "launchd":
        _write(launchd_plist(), launchd_plist_data(config))
        files.append(str(launchd_plist()))
        steps.append(_run(["launchctl", "unload", str(launchd_plist())], enabled=config.activate))
        steps.append(_run(["launchctl", "load", "-w", str(launchd_plist())], enabled=config.activate))
        steps = steps[1:]   # unloading a job that was not loaded is not a failure
    elif kind == "windows":
        _write(windows_xml(), windows_task_xml(config).encode("utf-16"))
        files.append(str(windows_xml()))
        steps.append(_run(["schtasks", "/Create", "/TN", WINDOWS_TASK, "/XML", str(windows_xml()), "/F"],
                          enabled=config.activate))
    else:
        raise ScheduleError(f"unknown scheduler {kind!r}")
    activated = all(ok for ok, _ in steps)
    problems = [text for ok, text in steps if not ok]
    message = (f"Scheduled with {kind} every night at {config.at}." if activated else
               f"Wrote {', '.join(files)}, but could not activate it with {kind} "
               f"({'; '.join(problems)}); activate it by hand or install the tool.")
    return {"kind": kind, "files": files, "activated": activated, "at": config.at,
            "message": message}


def _installed_kind(config: ScheduleConfig) -> str:
    """The scheduler to report on or remove: the one asked for, else the one whose files
    are there (installed with --kind, `status` looked at the detected one and said "not
    scheduled"), else the one this system would use."""
    if config.kind != "auto":
        return config.kind
    found = [kind for kind, path in _installed_files().items() if path.exists()]
    return detect() if not found or detect() in found else found[0]


def _installed_files() -> dict[str, Path]:
    """Each scheduler's file naming the job (the command, its data folder, its time)."""
    return {"systemd": systemd_dir() / f"{NAME}.service", "cron": cron_copy(),
            "launchd": launchd_plist(), "windows": windows_xml()}


def _runs_elsewhere(kind: str, config: ScheduleConfig) -> list[str]:
    """What the installed job runs that is not this Glance: another Python (a moved or
    deleted checkout: nothing runs) or another data folder (it trains out of sight)."""
    path = _installed_files()[kind]
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-16") if kind == "windows" else raw.decode("utf-8", "replace")
    except (OSError, UnicodeDecodeError):
        return []
    def written(value: str) -> bool:
        # As each scheduler's file writes it: plain, escaped for XML, or quoted for a shell
        # (a folder named with a ' was "another data folder" in cron's line).
        return any(form in text for form in (value, escape(value), shlex.quote(value)))
    notes = []
    if not written(config.python):
        notes.append(f"it runs another Python than {config.python}")
    folder = config.environment()["GLANCE_HOME"]
    if not written(folder):
        notes.append(f"it trains on another data folder than {folder}")
    return notes


def remove(config: ScheduleConfig) -> dict:
    kind = _installed_kind(config)
    removed = []
    if kind == "systemd":
        _run(["systemctl", "--user", "disable", "--now", f"{NAME}.timer"], enabled=config.activate)
        for name in systemd_units(ScheduleConfig()).keys():
            path = systemd_dir() / name
            if path.exists():
                path.unlink()
                removed.append(str(path))
        _run(["systemctl", "--user", "daemon-reload"], enabled=config.activate)
    elif kind == "cron":
        if shutil.which("crontab") and config.activate:
            kept, had = _crontab_without_ours()
            if had:
                _run(["crontab", "-"], stdin="\n".join(kept) + "\n" if kept else "")
                removed.append("crontab line")
        if cron_copy().exists():
            cron_copy().unlink()
            removed.append(str(cron_copy()))
    elif kind == "launchd":
        if launchd_plist().exists():
            _run(["launchctl", "unload", "-w", str(launchd_plist())], enabled=config.activate)
            launchd_plist().unlink()
            removed.append(str(launchd_plist()))
    elif kind == "windows":
        _run(["schtasks", "/Delete", "/TN", WINDOWS_TASK, "/F"], enabled=config.activate)
        if windows_xml().exists():
            windows_xml().unlink()
            removed.append(str(windows_xml()))
    message = f"Removed the nightly schedule ({', '.join(removed)})." if removed else \
        "No nightly schedule was installed."
    return {"kind": kind, "removed": removed, "message": message}


def status(config: ScheduleConfig) -> dict:
    kind = _installed_kind(config)
    not_running = None          # why the files are there but nothing will run them
    advice = "Run `align schedule install` again."
    if kind == "systemd":
        timer = systemd_dir() / f"{NAME}.timer"
        installed = timer.exists()
        ok, active = _run(["systemctl", "--user", "is-active", f"{NAME}.timer"], enabled=config.activate)
        detail = {"files": [str(p) for p in (timer, systemd_dir() / f"{NAME}.service") if p.exists()],
                  "active": active if ok else None}
        when = _systemd_time(timer) if installed else None
        if installed and config.activate and shutil.which("systemctl") and not ok:
            not_running = f"systemctl --user is-active says {active or 'nothing'!r}"
            advice = "Run `align schedule install --kind systemd` again."
            if "bus" in active.lower():
                # No user session (a server, a container, ssh without lingering): installing
                # again fails the same way, and auto finds neither systemd nor cron here.
                not_running = ("systemd's user manager cannot be reached (no user session "
                               f"bus: {active!r})")
                advice = ("Run it from a desktop session, or let your user's timers run without "
                          "one (`loginctl enable-linger`), then `align schedule install --kind "
                          "systemd` again; or `align schedule remove` and install with cron.")
    elif kind == "cron":
        installed = cron_copy().exists()
        when = _cron_time(cron_copy().read_text()) if installed else None
        detail = {"files": [str(cron_copy())] if installed else []}
        if installed and config.activate and not shutil.which("crontab"):
            not_running = "cron is not installed (there is no crontab command)"
            advice = "Install cron, then run `align schedule install` again."
        elif installed and config.activate:
            ok, table = _run(["crontab", "-l"])
            if not (ok and CRON_MARK in table):
                not_running = "its line is not in your crontab"
    elif kind == "launchd":
        installed = launchd_plist().exists()
        when = None
        if installed:
            interval = plistlib.loads(launchd_plist().read_bytes())["StartCalendarInterval"]
            when = f"{interval['Hour']:02d}:{interval['Minute']:02d}"
        detail = {"files": [str(launchd_plist())] if installed else []}
    else:
        installed = windows_xml().exists()
        when = None
        detail = {"files": [str(windows_xml())] if installed else []}
    message = (f"Nightly training is scheduled with {kind}" + (f" at {when}." if when else ".")
               if installed else "Nightly training is not scheduled (align schedule install).")
    elsewhere = _runs_elsewhere(kind, config) if installed else []
    if not_running:
        message = f"Nightly training is set up with {kind} but will not run: {not_running}. {advice}"
    elif elsewhere:
        message += (f" But {' and '.join(elsewhere)}: run `align schedule install` from this "
                    "Glance to train on this one.")
    return {"kind": kind, "installed": installed, "at": when, "message": message,
            "will_run": installed and not not_running, "runs_elsewhere": elsewhere, **detail}


def _systemd_time(timer: Path) -> str | None:
    for line in timer.read_text().splitlines():
        if line.startswith("OnCalendar="):
            return line.split()[-1][:5]
    return None


def _cron_time(line: str) -> str | None:
    parts = line.split()
    return f"{int(parts[1]):02d}:{int(parts[0]):02d}" if len(parts) > 2 else None
