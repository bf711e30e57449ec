"""Download a GGUF from the Hugging Face hub: progress, resume, cancel, sha256.

The only network access Glance ever makes, and only when the user starts it. The hub
address can be changed with GLANCE_HF_ENDPOINT (tests point it at a loopback server).
No Qt here: the dialog calls this from a worker thread.
"""
import hashlib
import http.client
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK_BYTES = 1 << 20
PROGRESS_BYTES = 1 << 18     # progress is told at most every 256 KiB (a chunk can be bytes)


class DownloadError(Exception):
    """The download failed; str() says why. A partial file is kept for resuming."""


class DownloadCancelled(DownloadError):
    def __init__(self):
        super().__init__("Download cancelled. Start it again to resume where it stopped.")


def hub_url(repo: str, filename: str, revision: str = "main") -> str:
    endpoint = os.environ.get("GLANCE_HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    return (f"{endpoint}/{urllib.parse.quote(repo)}/resolve/{urllib.parse.quote(revision)}/"
            f"{urllib.parse.quote(filename)}")


def download_target(directory: Path, filename: str) -> Path:
    """Where ``filename`` (perhaps given with the repository's folders) is saved."""
    return Path(directory) / Path(filename).name


def check_request(repo: str, filename: str, sha256: str | None = None) -> None:
    """What the user typed, checked before anything is opened or written."""
    if "/" not in repo or not filename.endswith(".gguf"):
        raise DownloadError("Give a hub repository as owner/name and a file name ending "
                            "in .gguf, e.g. HuggingFaceTB/SmolLM2-360M-Instruct-GGUF.")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise DownloadError(f"A SHA-256 is the file's 64 hexadecimal digits, not {sha256!r}.")


def download_model(repo: str, filename: str, directory: Path, revision: str = "main",
                   sha256: str | None = None,
                   progress: Callable[[int, int | None], None] | None = None,
                   cancel: threading.Event | None = None) -> Path:
    check_request(repo, filename, sha256)
    directory = Path(directory)
    target = download_target(directory, filename)
    if target.exists() and sha256 is not None:
        if _sha256(target, cancel) == sha256.strip().lower():
            return target            # downloaded before, and it is the file asked for
        raise DownloadError(f"{target} already exists and its SHA-256 is not the one given "
                            "(another file with the same name?). Remove it first to download "
                            "this one; nothing was downloaded.")
    if target.exists():
        raise DownloadError(f"{target} already exists (a model downloaded before, maybe from "
                            "another repository with the same file name). Remove it first to "
                            "download it again; nothing was downloaded.")
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    # Whose bytes the partial holds: named after the file only, a partial of owner-a's
    # model.gguf was resumed with owner-b's, one file made of two. An ETag, where the hub
    # gives one, also catches a file changed on the hub since (If-Range: 200, all of it).
    note = partial.with_name(partial.name + ".json")
    source = {"repo": repo, "revision": revision, "file": filename}
    have = partial.stat().st_size if partial.exists() else 0
    noted = _read_note(note) if have else None
    if have and noted is not None and noted.get("source") != source:
        partial.unlink()
        have = 0
    request = urllib.request.Request(hub_url(repo, filename, revision))
    if have:
        request.add_header("Range", f"bytes={have}-")
        if noted and noted.get("etag"):
            request.add_header("If-Range", noted["etag"])
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            # Nothing left past our bytes. Complete only if the hub's size (Content-Range
            # "bytes */SIZE") is exactly what we hold; else the file changed: start over.
            if error.headers.get("Content-Range", "").strip() != f"bytes */{have}":
                partial.unlink()
                return download_model(repo, filename, directory, revision, sha256,
                                      progress, cancel)
            response = None
        else:
            raise DownloadError(f"The hub answered {error.code} for {repo}/{filename}. "
                                "Check the repository and file name.") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"Could not reach the model hub ({getattr(error, 'reason', error)}). "
                            "Check your connection and try again.") from error
    noted_etag = (noted or {}).get("etag")
    content_range = response.headers.get("Content-Range") if response is not None else None
    if response is not None and response.status == 206 and (
            (noted_etag and response.headers.get("ETag") != noted_etag)
            or (content_range and not content_range.strip().startswith(f"bytes {have}-"))):
        # The rest of another version of the file (a hub that ignores If-Range), or not
        # the part asked for: appended, it made a file of two versions that still parsed.
        response.close()
        partial.unlink()
        return download_model(repo, filename, directory, revision, sha256, progress, cancel)
    if response is not None:
        with response:
            if response.status == 200:
                have = 0  # server ignored the range (or the file changed): start over
            if have == 0:
                _write_note(note, {"source": source, "etag": response.headers.get("ETag")})
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            told = have
            with open(partial, "ab" if have else "wb") as out:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled()
                    try:
                        # What has arrived, up to a chunk: read() waited for a whole MiB,
                        # and a cancel on a slow link waited seconds for it.
                        block = response.read1(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as error:  # reset, timeout
                        raise DownloadError(f"The download was interrupted at {have} bytes "
                                            f"({error}). Start it again to resume.") from error
                    if not block:
                        break
                    out.write(block)
                    have += len(block)
                    if progress and (have - told >= PROGRESS_BYTES or have == total):
                        told = have
                        progress(have, total)
            if total is not None and have < total:
                raise DownloadError(f"The download stopped at {have} of {total} bytes. "
                                    "Start it again to resume.")
    if sha256:
        digest = _sha256(partial, cancel)
        if digest != sha256.strip().lower():
            partial.unlink()
            note.unlink(missing_ok=True)
            raise DownloadError(f"Checksum mismatch for {filename}: expected {sha256}, got "
                                f"{digest}. The file was deleted; download it again.")
    os.replace(partial, target)
    note.unlink(missing_ok=True)
    return target


def _read_note(path: Path) -> dict | None:
    """The partial's note, or None where there is none (a partial from before notes)."""
    try:
        noted = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return noted if isinstance(noted, dict) else None


def _write_note(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def _sha256(path: Path, cancel: threading.Event | None = None) -> str:
    """Seconds for a model of gigabytes: a cancel stops it (the dialog waits for it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled()
            digest.update(block)
    return digest.hexdigest()
