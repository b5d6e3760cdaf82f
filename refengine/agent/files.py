"""Output files: what a session's code was asked to produce, collected from its folder and kept for the client.

    files = FileStore(store)                                       # same SQLite file as the SessionStore
    wanted = requested_files(["report.csv", {"name": "plot.png"}])  # checked names, with their formats
    produced = files.collect(session.id, session.folder, wanted)   # one File per requested name
    [f.as_json() for f in produced]                                # text | data_base64 | error, content_url

Every requested name gets exactly one File: the file's content when the code wrote it, else a placeholder
whose `error` says `not_produced` (never silence, so a client can tell "empty" from "missing"). Textual
formats that decode as UTF-8 come back as `text`, everything else as `data_base64`; bodies over the inline
cap are kept but answered only through `content_url` (GET /v1/files/{id}/content), so a large output does
not swell every response and export.

The session folder is written by sandboxed code, so it is read as untrusted: names are plain file names
(no '/', no '..'), links are not followed (a link to /etc/passwd is not a produced file), only regular files
count, and a file past `max_file_bytes` is refused as `too_large` before it is read into memory.
"""
from __future__ import annotations

import base64
import errno
import os
import re
import sqlite3
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from .sessions import SessionError, SessionStore, open_database, reading, writing

INLINE_CAP_BYTES = 256 * 1024            # larger bodies are served by content URL only
MAX_FILE_BYTES = 64 * 1024 * 1024        # larger outputs are refused (too_large), not read
MAX_REQUESTED_FILES = 64
MAX_NAME_LENGTH = 255                    # the usual file-system limit on one name
FORMAT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,31}$")
DEFAULT_FORMAT = "bin"                   # a name without an extension and no format given

NOT_PRODUCED = "not_produced"
TOO_LARGE = "too_large"

# format → MIME type; textual formats are answered as text when their bytes are UTF-8
MIME_TYPES = {
    "txt": "text/plain", "text": "text/plain", "log": "text/plain", "csv": "text/csv",
    "tsv": "text/tab-separated-values", "md": "text/markdown", "markdown": "text/markdown", "html": "text/html",
    "htm": "text/html", "css": "text/css", "py": "text/x-python", "js": "text/javascript",
    "json": "application/json", "jsonl": "application/jsonl", "ndjson": "application/x-ndjson",
    "xml": "application/xml", "yaml": "application/yaml", "yml": "application/yaml", "toml": "application/toml",
    "tex": "application/x-tex", "svg": "image/svg+xml",
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
    "bmp": "image/bmp", "pdf": "application/pdf", "zip": "application/zip", "gz": "application/gzip",
    "tar": "application/x-tar", "parquet": "application/vnd.apache.parquet", "npy": "application/octet-stream",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "wav": "audio/wav",
    "mp3": "audio/mpeg", "bin": "application/octet-stream",
}
TEXTUAL_MIME_TYPES = {"application/json", "application/jsonl", "application/x-ndjson", "application/xml",
                      "application/yaml", "application/toml", "application/x-tex", "image/svg+xml"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    content BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_session ON files (session_id, created_at);
"""


@dataclass(frozen=True)
class File:
    """One requested output as the client sees it: exactly one of `text`, `data_base64` or `error`, except a
    body too large to inline, which has only `content_url`."""
    id: str
    session_id: str
    name: str
    format: str
    mime_type: str
    bytes: int
    created_at: float
    text: str | None = None
    data_base64: str | None = None
    error: dict | None = None                  # {"code": "not_produced" | "too_large", "message": ...}
    content_url: str | None = None             # where the stored bytes are served; None for a placeholder

    def as_json(self) -> dict:
        fields = {"id": self.id, "object": "file", "session_id": self.session_id, "name": self.name,
                  "format": self.format, "mime_type": self.mime_type, "bytes": self.bytes,
                  "created_at": int(self.created_at)}
        for key in ("text", "data_base64", "error", "content_url"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = value
        return fields


def mime_type(file_format: str) -> str:
    return MIME_TYPES.get(file_format, "application/octet-stream")


def is_textual(file_format: str) -> bool:
    kind = mime_type(file_format)
    return kind.startswith("text/") or kind in TEXTUAL_MIME_TYPES


def content_url(file_id: str) -> str:
    return f"/v1/files/{file_id}/content"


def check_file_name(name, param: str) -> str:
    """A plain file name in the session folder: never a path, so an output can only come from that folder."""
    if not isinstance(name, str) or not name:
        raise SessionError(f"Invalid value for '{param}': expected a non-empty file name.", param)
    if len(name) > MAX_NAME_LENGTH:
        raise SessionError(f"Invalid value for '{param}': a file name has at most {MAX_NAME_LENGTH} characters.",
                           param)
    if "/" in name or "\\" in name or ".." in name or name == "." or not name.isprintable():
        raise SessionError(f"Invalid value for '{param}': {name!r} is not a plain file name (no '/', '\\', "
                           "'..' or control characters): outputs are read from the session folder itself.", param)
    return name


def default_format(name: str) -> str:
    """The extension, lowercased ("report.CSV" → "csv"), when it is a valid format; else "bin"."""
    _, dot, extension = name.rpartition(".")
    extension = extension.lower()
    return extension if dot and FORMAT_PATTERN.match(extension) else DEFAULT_FORMAT


def requested_files(value, param: str = "files") -> list[dict]:
    """A request's `files` (names, or objects {name, format?, description?}) as checked
    [{"name", "format", "description"?}], one per distinct name; SessionError naming the bad entry."""
    if not isinstance(value, list):
        raise SessionError(f"Invalid value for '{param}': expected an array of file names or objects.", param)
    if len(value) > MAX_REQUESTED_FILES:
        raise SessionError(f"Invalid value for '{param}': at most {MAX_REQUESTED_FILES} files may be requested.",
                           param)
    wanted, seen = [], set()
    for i, entry in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise SessionError(f"Invalid value for '{where}': expected a file name or an object with 'name'.",
                               where)
        unknown = sorted(set(entry) - {"name", "format", "description"})
        if unknown:
            raise SessionError(f"Invalid key in '{where}': {unknown[0]!r} (expected name, format, description).",
                               f"{where}.{unknown[0]}")
        name = check_file_name(entry.get("name"), f"{where}.name" if "name" in entry else where)
        if name in seen:
            raise SessionError(f"Invalid value for '{where}.name': {name!r} is requested twice.", f"{where}.name")
        seen.add(name)
        file_format = entry.get("format")
        if file_format is None:
            file_format = default_format(name)
        elif not isinstance(file_format, str) or not FORMAT_PATTERN.match(file_format.lower()):
            raise SessionError(f"Invalid value for '{where}.format': expected a short format name such as "
                               "'csv' or 'png'.", f"{where}.format")
        checked = {"name": name, "format": file_format.lower()}
        description = entry.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise SessionError(f"Invalid value for '{where}.description': expected a string.",
                                   f"{where}.description")
            checked["description"] = description
        wanted.append(checked)
    return wanted


class Unreadable(Exception):
    """A requested output that exists in some form but is not a file we may serve."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def read_output(folder: Path, name: str, limit: int) -> bytes | None:
    """The bytes of a regular file `name` in `folder`; None when absent; Unreadable when it is a link, a
    folder, a pipe, or larger than `limit` (checked before reading, and again while reading, since the
    sandbox may still be writing it)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(folder / name, flags)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Unreadable(NOT_PRODUCED, f"'{name}' is a link, not a file; links are not followed.") from None
        raise Unreadable(NOT_PRODUCED, f"'{name}' could not be read: {error.strerror}.") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise Unreadable(NOT_PRODUCED, f"'{name}' is not a regular file.")
        if status.st_size > limit:
            raise Unreadable(TOO_LARGE, f"'{name}' has {status.st_size} bytes, over the limit of {limit}.")
        handle = os.fdopen(descriptor, "rb")          # owns the descriptor from here on
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        content = handle.read(limit + 1)
    if len(content) > limit:
        raise Unreadable(TOO_LARGE, f"'{name}' has more than {limit} bytes, the limit.")
    return content


class FileStore:
    """Output files in the sessions' SQLite file: a row per produced file, deleted with its session."""

    def __init__(self, sessions: SessionStore, *, inline_cap: int = INLINE_CAP_BYTES,
                 max_file_bytes: int = MAX_FILE_BYTES):
        self.sessions = sessions
        self.clock = sessions.clock
        self.inline_cap, self.max_file_bytes = inline_cap, max_file_bytes
        self.database = open_database(sessions.state_dir, SCHEMA)

    def record(self, session_id: str, name: str, content: bytes, format: str | None = None) -> File:
        """Keep `content` as a produced file of the session (`format` defaults to the name's extension);
        KeyError when the session does not exist."""
        file_format = default_format(name) if format is None else format.lower()
        file_id = "file-" + uuid.uuid4().hex
        now = self.clock()
        try:
            with writing(self.database) as connection:
                connection.execute(
                    "INSERT INTO files (id, session_id, name, format, mime_type, bytes, created_at, content) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (file_id, session_id, name, file_format, mime_type(file_format), len(content), now,
                     sqlite3.Binary(content)))
        except sqlite3.IntegrityError:              # the foreign key: no such session
            raise KeyError(session_id) from None
        return self._file((file_id, session_id, name, file_format, mime_type(file_format), len(content), now,
                           content))

    def missing(self, session_id: str, name: str, format: str | None = None, *, code: str = NOT_PRODUCED,
                message: str | None = None) -> File:
        """The placeholder for a requested file the code did not produce (not stored: there is nothing to
        serve)."""
        file_format = default_format(name) if format is None else format.lower()
        message = message or f"The file '{name}' was not produced in the session's working folder."
        return File(id="file-" + uuid.uuid4().hex, session_id=session_id, name=name, format=file_format,
                    mime_type=mime_type(file_format), bytes=0, created_at=self.clock(),
                    error={"code": code, "message": message})

    def get(self, file_id: str) -> tuple[File, bytes] | None:
        with reading(self.database) as connection:
            row = connection.execute(
                "SELECT id, session_id, name, format, mime_type, bytes, created_at, content FROM files "
                "WHERE id = ?", (file_id,)).fetchone()
        return None if row is None else (self._file(row), bytes(row[7]))

    def for_session(self, session_id: str) -> list[File]:
        """Every file the session produced, oldest first (bodies past the inline cap are not loaded)."""
        with reading(self.database) as connection:
            rows = connection.execute(
                "SELECT id, session_id, name, format, mime_type, bytes, created_at, "
                "CASE WHEN bytes <= ? THEN content END FROM files WHERE session_id = ? "
                "ORDER BY created_at, rowid", (self.inline_cap, session_id)).fetchall()
        return [self._file(row) for row in rows]

    def collect(self, session_id: str, folder: Path, names: list) -> list[File]:
        """One File per requested name (`names`: names or {name, format?}, as `requested_files` takes), in
        the order asked: the produced ones recorded, placeholders for the rest."""
        collected = []
        for entry in requested_files(names):
            name, file_format = entry["name"], entry["format"]
            try:
                content = read_output(Path(folder), name, self.max_file_bytes)
            except Unreadable as problem:
                collected.append(self.missing(session_id, name, file_format, code=problem.code,
                                              message=problem.message))
                continue
            collected.append(self.missing(session_id, name, file_format) if content is None
                             else self.record(session_id, name, content, file_format))
        return collected

    def _file(self, row: tuple) -> File:
        """A stored row as the client sees it: inline text or base64 up to the cap, the content URL always."""
        file_id, session_id, name, file_format, mime, size, created_at, content = row
        text = data_base64 = None
        if content is not None and size <= self.inline_cap:
            content = bytes(content)
            if is_textual(file_format):
                try:
                    text = content.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            if text is None:
                data_base64 = base64.b64encode(content).decode("ascii")
        return File(id=file_id, session_id=session_id, name=name, format=file_format, mime_type=mime,
                    bytes=size, created_at=created_at, text=text, data_base64=data_base64,
                    content_url=content_url(file_id))
