"""Nothing leaves the machine, also from the libraries training loads.

trl's trainers post telemetry to the Hugging Face hub when they are built (unless CI is
set), and huggingface_hub then fetches an agent registry for its request headers;
transformers and datasets look things up on the hub by default. All of them honour the
switches below, which huggingface_hub reads once, when it is first imported. `align`
sets them on import, before any of those libraries is loaded by its code, and sets the
already-read values too in case one was imported earlier in the process.
(tests/test_no_network.py traces a whole training night for network calls.)
"""
import os
import sys

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",             # huggingface_hub, and transformers through it
    "HF_HUB_DISABLE_TELEMETRY": "1",   # trl's and the hub's usage pings
    "DO_NOT_TRACK": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def keep_offline() -> None:
    os.environ.update(OFFLINE_ENVIRONMENT)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
        constants.HF_HUB_DISABLE_TELEMETRY = True
