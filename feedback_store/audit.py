"""Byte-level audit of the database files: decrypt EVERY encrypted unit of every DuckDB
file in the data folder with the key in force, fail on any unit that does not
authenticate, and search the plaintext for markers.

A raw-byte search of an encrypted file proves nothing (it never finds anything), and a
decrypted copy made with ``COPY FROM DATABASE`` only holds live rows. This module reads
the files the way DuckDB 1.5.5 writes them: every block of the main file (free ones
too), every entry of every WAL. The layout it relies on is documented in
docs/privacy.md ("Encrypted file format we audit"); it was learnt from DuckDB's source
and checked against files written by duckdb 1.5.5 + httpfs, and no DuckDB code is used.

Spill files (``duckdb_temp_storage_*.tmp``, ``duckdb_temp_block-*.block``) are
encrypted by DuckDB under a random per-process key that never leaves memory, not under
the database key, so nobody (this audit included) can decrypt them. Their framing can
be checked (:func:`inspect_spill_file`), but :func:`decrypt_database_files` refuses to
call a folder audited while any exist: audit a closed store, where DuckDB has removed
them.

Pure functions, no DuckDB: usable by tests and by a later ``glance data verify``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import StoreError

# --- the format (see docs/privacy.md) ---------------------------------------------------
FILE_HEADER_SIZE = 4096            # main header, database header 1, database header 2
BLOCK_START = 3 * FILE_HEADER_SIZE  # offset of block 0
DEFAULT_BLOCK_ALLOC_SIZE = 262144
MAGIC = b"DUCK"
MAGIC_OFFSET = 8
CANARY = b"DUCKKEY\0"
NONCE_SIZE = 12
TAG_SIZE = 16
CIPHERTEXT_OFFSET = 32             # nonce 0..12, tag 12..28, 4 unauthenticated bytes
CHECKSUM_SIZE = 8
ENCRYPTED_WAL_VERSION = 3
SPILL_HEADER_SIZE = 32             # nonce 0..12, tag 12..28, zeros 28..32
WAL_SUFFIXES = (".wal", ".wal.checkpoint", ".wal.recovery")

# main header field offsets (bytes from the start of the file)
_VERSION_AT = 12
_FLAGS_AT = 20
_LIBRARY_AT = 52
_ENCRYPTION_METADATA_AT = 116
_SALT_AT = 124
_CANARY_AT = 140
_CANARY_NONCE_AT = 148
_CANARY_TAG_AT = 160

_KDF_SHA256 = 1
_CIPHER_GCM = 1
_ENCRYPTION_V1 = 1


# --- errors -----------------------------------------------------------------------------
class AuditError(StoreError):
    """The audit could not vouch for every byte. str() says which file and where."""


class BlockNotAuthentic(AuditError):
    def __init__(self, file: Path, block_index: int, offset: int, what: str):
        super().__init__(
            f"{file.name}: {what} (block index {block_index}, byte offset {offset}) does not "
            "authenticate under the key in force: it was changed, truncated, or written "
            "under another key."
        )
        self.file, self.block_index, self.offset = file, block_index, offset


class UnsupportedFormat(AuditError):
    """The file is not laid out the way DuckDB 1.5.5 writes encrypted files."""


class SpillFilesPresent(AuditError):
    def __init__(self, files: list[Path]):
        super().__init__(
            f"{len(files)} DuckDB spill file(s) exist ({', '.join(sorted(f.name for f in files))}). "
            "DuckDB encrypts them under a random key that lives only in the memory of the "
            "process that wrote them, so they cannot be audited. Close Glance (DuckDB "
            "removes them on close) and audit again."
        )
        self.files = files


# --- results ----------------------------------------------------------------------------
class DecryptedBlock(NamedTuple):
    """One authenticated unit, decrypted. ``block_index``: in a database file, -2 and -1
    are database headers 1 and 2 and n >= 0 is DuckDB block id n (free blocks included);
    in a WAL, n is the n-th entry. ``plaintext`` is everything the tag covers: the 8-byte
    checksum, then the block's or entry's content."""
    file: Path
    block_index: int
    plaintext: bytes


class MarkerHit(NamedTuple):
    file: Path
    block_index: int
    offset: int      # within the plaintext


@dataclass(frozen=True)
class MainHeader:
    storage_version: int
    library_version: str
    encrypted: bool
    kdf: int
    additional_authenticated_data: int
    cipher: int
    encryption_version: int
    key_length: int
    salt: bytes
    canary: bytes
    canary_nonce: bytes
    canary_tag: bytes


@dataclass(frozen=True)
class SpillSlot:
    file: Path
    slot_index: int
    offset: int          # of the 32-byte slot header
    nonce: bytes
    tag: bytes
    ciphertext_size: int


# --- key derivation -----------------------------------------------------------------------
_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def user_key_bytes(key_text: str) -> bytes:
    """The bytes DuckDB hashes for ``ENCRYPTION_KEY '<key_text>'``: the string decoded as
    base64 when DuckDB's decoder accepts it (a 64-character hex key is valid base64 and
    gives 48 bytes), else the string's own bytes."""
    raw = key_text.encode("utf-8")
    if not raw or b"\\" in raw or any(b < 0x20 or b > 0x7E for b in raw):
        # DuckDB casts the key VARCHAR -> BLOB, which unescapes backslashes; Glance keys
        # are hex, so anything else is not worth imitating.
        raise UnsupportedFormat("The audit only supports printable ASCII keys without backslashes.")
    body, last = raw[:-4], raw[-4:]
    if (len(raw) % 4 or any(b not in _BASE64_ALPHABET for b in body + last[:2])
            or any(b not in _BASE64_ALPHABET and b != ord("=") for b in last[2:])):
        return raw  # DuckDB's base64 decoder refuses it: the key is used as given
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:  # e.g. "ab=c": DuckDB's own decoder would accept it
        raise UnsupportedFormat("The audit does not imitate DuckDB for this key's padding.") from None


def derive_file_key(key_text: str, salt: bytes) -> bytes:
    """AES-256 key of one database file: SHA-256(salt || user key bytes); the salt is
    the file's 16-byte database identifier from the main header."""
    return hashlib.sha256(salt + user_key_bytes(key_text)).digest()


# --- checksums (DuckDB's, to prove the plaintext is laid out as we think) ---------------
_M64 = (1 << 64) - 1
_CHECKSUM_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)


def duckdb_checksum(data: bytes) -> int:
    words = len(data) // 8
    result = 5381
    if words:
        with np.errstate(over="ignore"):
            mixed = np.frombuffer(data, dtype="<u8", count=words) * _CHECKSUM_MULTIPLIER
        result ^= int(np.bitwise_xor.reduce(mixed))
    if len(data) % 8:
        result ^= _checksum_tail(data[words * 8:])
    return result


def _checksum_tail(tail: bytes) -> int:
    """The 1-7 trailing bytes (a murmur-style string hash in DuckDB)."""
    m, r = 0xC6A4A7935BD1E995, 47
    h = (0xE17A1465 ^ (len(tail) * m)) & _M64
    for i in range(len(tail) - 1, -1, -1):
        h ^= tail[i] << (8 * i)
    h = (h * m) & _M64
    h ^= h >> r
    h = (h * m) & _M64
    h ^= h >> r
    return h


# --- reading one database file ----------------------------------------------------------
def is_database_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAGIC_OFFSET + len(MAGIC))[MAGIC_OFFSET:] == MAGIC
    except OSError:
        return False


def read_main_header(path: Path) -> MainHeader:
    with open(path, "rb") as handle:
        header = handle.read(FILE_HEADER_SIZE)
    if len(header) < FILE_HEADER_SIZE or header[MAGIC_OFFSET:MAGIC_OFFSET + 4] != MAGIC:
        raise UnsupportedFormat(f"{path.name} is not a DuckDB database file.")
    if struct.unpack_from("<Q", header, 0)[0] != duckdb_checksum(header[CHECKSUM_SIZE:]):
        raise UnsupportedFormat(f"{path.name}: the main header's checksum does not match.")
    flags = struct.unpack_from("<4Q", header, _FLAGS_AT)
    kdf, aad, cipher, version, key_length = struct.unpack_from("<BBBBI", header, _ENCRYPTION_METADATA_AT)
    return MainHeader(
        storage_version=struct.unpack_from("<Q", header, _VERSION_AT)[0],
        library_version=header[_LIBRARY_AT:_LIBRARY_AT + 32].rstrip(b"\0").decode("ascii", "replace"),
        encrypted=bool(flags[0] & 1),
        kdf=kdf, additional_authenticated_data=aad, cipher=cipher,
        encryption_version=version, key_length=key_length,
        salt=header[_SALT_AT:_SALT_AT + 16],
        canary=header[_CANARY_AT:_CANARY_AT + 8],
        canary_nonce=header[_CANARY_NONCE_AT:_CANARY_NONCE_AT + NONCE_SIZE],
        canary_tag=header[_CANARY_TAG_AT:_CANARY_TAG_AT + TAG_SIZE],
    )


def file_cipher(path: Path, key_hex: str) -> tuple[MainHeader, AESGCM]:
    """Check the main header is the format we audit and the key opens the file (the
    canary), and return the file's AES-GCM cipher."""
    header = read_main_header(path)
    if not header.encrypted:
        raise UnsupportedFormat(f"{path.name} is not encrypted: its contents are plaintext.")
    expected = (_KDF_SHA256, 0, _CIPHER_GCM, _ENCRYPTION_V1, 32)
    found = (header.kdf, header.additional_authenticated_data, header.cipher,
             header.encryption_version, header.key_length)
    if found != expected:
        raise UnsupportedFormat(
            f"{path.name}: encryption metadata (kdf, aad, cipher, version, key length) is "
            f"{found}, the audit knows {expected} (DuckDB 1.5.5, AES-256-GCM).")
    cipher = AESGCM(derive_file_key(key_hex, header.salt))
    try:
        canary = cipher.decrypt(header.canary_nonce, header.canary + header.canary_tag, None)
    except InvalidTag:
        canary = None
    if canary != CANARY:
        raise AuditError(f"The key in force does not open {path.name} (its canary does not "
                         "authenticate).")
    return header, cipher


def _open_unit(cipher: AESGCM, unit: bytes, nonce: bytes, tag: bytes, file: Path,
               index: int, offset: int, what: str) -> bytes:
    try:
        plaintext = cipher.decrypt(nonce, unit + tag, None)
    except InvalidTag:
        raise BlockNotAuthentic(file, index, offset, what) from None
    stored = struct.unpack_from("<Q", plaintext, 0)[0]
    if stored != duckdb_checksum(plaintext[CHECKSUM_SIZE:]):
        raise UnsupportedFormat(
            f"{file.name}: {what} at byte {offset} authenticates but its checksum does not "
            "match: the layout is not the one the audit knows.")
    return plaintext


def _open_block(cipher: AESGCM, raw: bytes, file: Path, index: int, offset: int,
                what: str) -> bytes:
    return _open_unit(cipher, raw[CIPHERTEXT_OFFSET:], raw[:NONCE_SIZE],
                      raw[NONCE_SIZE:NONCE_SIZE + TAG_SIZE], file, index, offset, what)


def _active_header(first: bytes, second: bytes) -> bytes:
    """DuckDB uses header 1 only when its iteration count is strictly higher."""
    def iteration(plaintext: bytes) -> int:
        return struct.unpack_from("<Q", plaintext, CHECKSUM_SIZE)[0]
    return first if iteration(first) > iteration(second) else second


def iter_database_file(path: Path, key_hex: str) -> Iterator[DecryptedBlock]:
    """Both database headers, then every block of the file in order (used or free)."""
    _, cipher = file_cipher(path, key_hex)
    size = path.stat().st_size
    if size < BLOCK_START:
        raise UnsupportedFormat(f"{path.name} is shorter than its three headers ({size} bytes).")
    with open(path, "rb") as handle:
        headers = []
        for index, offset in ((-2, FILE_HEADER_SIZE), (-1, 2 * FILE_HEADER_SIZE)):
            handle.seek(offset)
            plaintext = _open_block(cipher, handle.read(FILE_HEADER_SIZE), path, index, offset,
                                    f"database header {index + 3}")
            headers.append(plaintext)
            yield DecryptedBlock(path, index, plaintext)
        # DatabaseHeader after the checksum: iteration, meta block, free list, block count,
        # block allocation size, vector size, serialization compatibility (u64 each).
        active = _active_header(*headers)
        block_size = struct.unpack_from("<Q", active, CHECKSUM_SIZE + 32)[0] or DEFAULT_BLOCK_ALLOC_SIZE
        if (size - BLOCK_START) % block_size:
            raise UnsupportedFormat(
                f"{path.name}: {size - BLOCK_START} bytes after the headers are not a whole "
                f"number of {block_size}-byte blocks (a torn write?).")
        handle.seek(BLOCK_START)
        for block_id in range((size - BLOCK_START) // block_size):
            offset = BLOCK_START + block_id * block_size
            yield DecryptedBlock(path, block_id, _open_block(
                cipher, handle.read(block_size), path, block_id, offset, f"block {block_id}"))


def free_blocks(path: Path, key_hex: str) -> set[int]:
    """The ids of the blocks DuckDB counts as free in the active database header: its
    free list (kept in metadata) plus every block past the header's block count. A hit
    in one of these is text DuckDB no longer uses but has not overwritten."""
    blocks = {b.block_index: b.plaintext for b in iter_database_file(path, key_hex)}
    active = _active_header(blocks[-2], blocks[-1])
    _, _, free_list, block_count, block_size = struct.unpack_from("<5Q", active, CHECKSUM_SIZE)
    block_size = block_size or DEFAULT_BLOCK_ALLOC_SIZE
    free = {i for i in blocks if i >= block_count}
    if free_list == 0xFFFFFFFFFFFFFFFF:
        return free
    # Metadata: a block split into 64 sub-blocks of floor8((block_size - 40) / 64) bytes,
    # each starting with the u64 pointer to the next (id | sub-block index << 56, or -1).
    sub_size = ((block_size - 40) // 64) & ~7
    pointer, stream, seen = free_list, bytearray(), set()
    while pointer != 0xFFFFFFFFFFFFFFFF:
        block_id, index = pointer & ((1 << 56) - 1), pointer >> 56
        if block_id not in blocks or index >= 64 or pointer in seen:
            raise UnsupportedFormat(f"{path.name}: the free list chain is not well formed.")
        seen.add(pointer)
        sub = blocks[block_id][CHECKSUM_SIZE + index * sub_size:CHECKSUM_SIZE + (index + 1) * sub_size]
        pointer = struct.unpack_from("<Q", sub, 0)[0]
        stream += sub[8:]
    count = struct.unpack_from("<Q", stream, 0)[0]
    return free | set(struct.unpack_from(f"<{count}q", stream, 8))


def unauthenticated_bytes(path: Path) -> list[tuple[int, bytes]]:
    """(offset, bytes) of the 4 bytes at 28..32 of every encrypted block of a database
    file (default block size): DuckDB 1.5.5 fills them from uninitialised memory and no
    tag covers them."""
    size = path.stat().st_size
    read_main_header(path)  # refuses anything that is not a database file
    offsets = [FILE_HEADER_SIZE, 2 * FILE_HEADER_SIZE]
    offsets += range(BLOCK_START, size, DEFAULT_BLOCK_ALLOC_SIZE)
    with open(path, "rb") as handle:
        found = []
        for offset in offsets:
            handle.seek(offset + NONCE_SIZE + TAG_SIZE)
            found.append((offset + NONCE_SIZE + TAG_SIZE, handle.read(4)))
    return found


# --- reading a WAL ------------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise UnsupportedFormat("the WAL header ends inside a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def read_wal_header(data: bytes, name: str) -> tuple[dict, int]:
    """The plaintext header object: field 100 wal_type (98), 101 version (3 = encrypted),
    102 database identifier (16 bytes), 103 checkpoint iteration. Returns the fields and
    the offset of the first entry."""
    fields, pos = {}, 0
    while True:
        if pos + 2 > len(data):
            raise UnsupportedFormat(f"{name}: the WAL header is cut short.")
        field = struct.unpack_from("<H", data, pos)[0]
        pos += 2
        if field == 0xFFFF:
            break
        if field == 102:
            count, pos = _varint(data, pos)
            values = []
            for _ in range(count):
                value, pos = _varint(data, pos)
                values.append(value)
            fields[field] = bytes(values)
        elif field in (100, 101, 103):
            fields[field], pos = _varint(data, pos)
        else:
            raise UnsupportedFormat(f"{name}: unknown WAL header field {field}.")
    if fields.get(100) != 98:
        raise UnsupportedFormat(f"{name} does not start with a WAL version header.")
    return fields, pos


def iter_wal_file(path: Path, database: Path, key_hex: str) -> Iterator[DecryptedBlock]:
    """Every entry of a WAL, decrypted with the key of the database it belongs to."""
    data = path.read_bytes()
    if not data:
        return
    if not database.exists():
        raise AuditError(f"{path.name} has no database file {database.name} beside it, so "
                         "its key cannot be derived.")
    header, cipher = file_cipher(database, key_hex)
    fields, pos = read_wal_header(data, path.name)
    if fields.get(101) != ENCRYPTED_WAL_VERSION:
        raise UnsupportedFormat(f"{path.name} is WAL version {fields.get(101)}, not the "
                                "encrypted version 3: its entries are plaintext.")
    if fields.get(102, header.salt) != header.salt:
        raise AuditError(f"{path.name} belongs to another database file (its database "
                         f"identifier is not the one in {database.name}).")
    index = 0
    while pos < len(data):
        start = pos
        if pos + 8 > len(data):
            raise BlockNotAuthentic(path, index, start, f"WAL entry {index} (cut short)")
        size = struct.unpack_from("<Q", data, pos)[0]
        pos += 8
        nonce = data[pos:pos + NONCE_SIZE]
        pos += NONCE_SIZE
        body = data[pos:pos + CHECKSUM_SIZE + size]
        pos += CHECKSUM_SIZE + size
        tag = data[pos:pos + TAG_SIZE]
        pos += TAG_SIZE
        if pos > len(data):
            raise BlockNotAuthentic(path, index, start, f"WAL entry {index} (cut short)")
        yield DecryptedBlock(path, index, _open_unit(cipher, body, nonce, tag, path, index,
                                                     start, f"WAL entry {index}"))
        index += 1


# --- spill files ------------------------------------------------------------------------
_SPILL_NAME = re.compile(r"duckdb_temp_storage_(DEFAULT|S(\d+)K)-\d+\.tmp")
_BLOCK_NAME = re.compile(r"duckdb_temp_block-\d+\.block")


def spill_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in Path(data_dir).rglob("duckdb_temp_*")
                  if p.is_file() and (_SPILL_NAME.fullmatch(p.name) or _BLOCK_NAME.fullmatch(p.name)))


def inspect_spill_file(path: Path, block_alloc_size: int = DEFAULT_BLOCK_ALLOC_SIZE) -> list[SpillSlot]:
    """Check a spill file has DuckDB's encrypted framing and list its slots. Cannot
    authenticate them: the key is DuckDB's per-process temporary key."""
    data = path.read_bytes()
    slots = []
    if _BLOCK_NAME.fullmatch(path.name):
        # u64 buffer size, u64 block header size, 32-byte slot header, ciphertext
        if len(data) < 16 + SPILL_HEADER_SIZE:
            raise UnsupportedFormat(f"{path.name} is too short for an encrypted spill block.")
        buffer_size, header_size = struct.unpack_from("<QQ", data, 0)
        ciphertext = buffer_size + header_size
        if len(data) != 16 + SPILL_HEADER_SIZE + ciphertext:
            raise UnsupportedFormat(f"{path.name} does not have the encrypted spill framing "
                                    "(plaintext spill?).")
        offsets, slot_size = [16], ciphertext
    else:
        match = _SPILL_NAME.fullmatch(path.name)
        if not match:
            raise UnsupportedFormat(f"{path.name} is not a DuckDB spill file.")
        slot_size = block_alloc_size if match.group(1) == "DEFAULT" else int(match.group(2)) * 1024
        stride = slot_size + SPILL_HEADER_SIZE
        if len(data) % stride:
            raise UnsupportedFormat(f"{path.name} is not a whole number of encrypted "
                                    f"{stride}-byte slots (plaintext spill?).")
        offsets = range(0, len(data), stride)
    for index, offset in enumerate(offsets):
        header = data[offset:offset + SPILL_HEADER_SIZE]
        if header[NONCE_SIZE + TAG_SIZE:] != b"\0" * 4 or header[NONCE_SIZE:NONCE_SIZE + TAG_SIZE] == bytes(TAG_SIZE):
            raise UnsupportedFormat(f"{path.name}: slot {index} has no encrypted-slot header.")
        slots.append(SpillSlot(path, index, offset, header[:NONCE_SIZE],
                               header[NONCE_SIZE:NONCE_SIZE + TAG_SIZE], slot_size))
    return slots


# --- the audit ----------------------------------------------------------------------------
def database_files(data_dir: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """DuckDB database files (by their magic bytes) and WALs (with their database) in
    the top level of the data folder."""
    data_dir = Path(data_dir)
    databases, wals = [], []
    for child in sorted(data_dir.iterdir()):
        if not child.is_file():
            continue
        suffix = next((s for s in WAL_SUFFIXES if child.name.endswith(s)), None)
        if suffix:
            wals.append((child, child.with_name(child.name[:-len(suffix)])))
        elif is_database_file(child):
            databases.append(child)
    return databases, wals


def iter_decrypted_blocks(data_dir: Path, key_hex: str) -> Iterator[DecryptedBlock]:
    """Streaming form of :func:`decrypt_database_files` (constant memory)."""
    spills = spill_files(data_dir)
    if spills:
        raise SpillFilesPresent(spills)
    databases, wals = database_files(data_dir)
    for database in databases:
        yield from iter_database_file(database, key_hex)
    for wal, database in wals:
        yield from iter_wal_file(wal, database, key_hex)


def decrypt_database_files(data_dir: Path, key_hex: str) -> list[DecryptedBlock]:
    """Every encrypted unit of every database file and WAL in ``data_dir``, decrypted with
    ``key_hex`` (the key in force). Raises :class:`BlockNotAuthentic` on the first unit
    that does not authenticate, :class:`SpillFilesPresent` if spill files exist, and
    :class:`AuditError` for anything else it cannot vouch for."""
    return list(iter_decrypted_blocks(data_dir, key_hex))


def find_marker(blocks: Iterable[DecryptedBlock], marker: str | bytes) -> list[MarkerHit]:
    """Every place ``marker`` (UTF-8 if text) occurs in the plaintext of ``blocks``."""
    needle = marker.encode("utf-8") if isinstance(marker, str) else bytes(marker)
    hits = []
    for block in blocks:
        at = block.plaintext.find(needle)
        while at != -1:
            hits.append(MarkerHit(block.file, block.block_index, at))
            at = block.plaintext.find(needle, at + 1)
    return hits
