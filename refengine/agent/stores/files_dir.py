"""`--files-dir`: produced files' bytes in a folder (shared storage when replicas run on several machines)
instead of the store's rows, which keep the rest (name, format, size, session) with an empty body.

    files = FolderFiles(store.files, Path("/srv/refengine-files"))   # any store's FileStore
    files.record(session_id, "plot.png", content)                     # bytes → <dir>/<session hash>/<file id>

A session's bytes are one folder, named like its working folder (a hash of its id, so no id is a path), and
go with it (`remove_session`, called when a session is deleted, expires or is evicted).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..files import File
from ..sessions import folder_name


class FolderFiles:
    """files.FileStore's methods, bodies in `folder`."""

    def __init__(self, rows, folder: Path):
        self.rows, self.folder = rows, Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __getattr__(self, name):             # inline_cap, max_file_bytes, missing, clock: the rows' own
        return getattr(self.rows, name)

    def __setattr__(self, name, value):
        if name in ("rows", "folder"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.rows, name, value)

    def record(self, session_id: str, name: str, content: bytes, format: str | None = None) -> File:
        row = self.rows.record(session_id, name, b"", format)            # KeyError for an unknown session
        path = self._path(session_id, row.id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as partial:   # never half a file
            partial.write(content)
        os.replace(partial.name, path)
        return self._with_body(row, content)

    def get(self, file_id: str) -> tuple[File, bytes] | None:
        found = self.rows.get(file_id)
        if found is None:
            return None
        content = self._read(found[0])
        return self._with_body(found[0], content), content

    def for_session(self, session_id: str) -> list[File]:
        """Every file of the session, oldest first (bodies past the inline cap are not read)."""
        listed = []
        for row in self.rows.for_session(session_id):
            path = self._path(session_id, row.id)
            size = path.stat().st_size if path.exists() else 0
            listed.append(self._with_body(row, self._read(row) if size <= self.rows.inline_cap else None, size))
        return listed

    def collect(self, session_id: str, folder: Path, names: list) -> list[File]:
        return type(self.rows).collect(self, session_id, folder, names)   # its logic, our record

    def remove_session(self, session_id: str) -> None:
        shutil.rmtree(self.folder / folder_name(session_id), ignore_errors=True)

    def _path(self, session_id: str, file_id: str) -> Path:
        if "/" in file_id or file_id.startswith("."):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.folder / folder_name(session_id) / file_id

    def _read(self, row: File) -> bytes:
        try:
            return self._path(row.session_id, row.id).read_bytes()
        except FileNotFoundError:                  # its session went meanwhile
            return b""

    def _with_body(self, row: File, content: bytes | None, size: int | None = None) -> File:
        """The row as the rows' store would answer it had it kept `content` (inline up to the cap)."""
        size = len(content) if size is None else size
        return self.rows._file((row.id, row.session_id, row.name, row.format, row.mime_type, size,
                                row.created_at, content))
