"""Sessions and output files over HTTP: list, export, import, delete; a produced file's bytes.

    GET    /v1/sessions                 → {"object": "list", "data": [{id, object: "session", created,
                                                                       last_used, message_count}]}
    GET    /v1/sessions/{id}            → the export: {id, object: "session", created, last_used, messages, files}
    PUT    /v1/sessions/{id}            {"messages": [...]} → the history replaced (the session created if new),
                                                              answered with the export
    DELETE /v1/sessions/{id}            → {id, object: "session.deleted", deleted: true}
    GET    /v1/files/{id}/content       → the file's bytes, as its MIME type, as a download

An imported history is checked as a chat request's `messages` are (web.schema), so every stored session is
one the chat path can continue. Unknown ids are 404s; a malformed id is a 400 naming `session_id`. The app's
API key gate covers these paths like every other.
"""
from __future__ import annotations

import falcon
from jsonschema import Draft202012Validator

from refengine.agent.files import FileStore
from refengine.agent.sessions import Session, SessionError, SessionStore, check_session_id

from .body import Settings, read_json
from .errors import APIError, invalid_request
from .schema import MESSAGES, check_fields, check_messages, validate

IMPORT_FIELDS = {"messages": MESSAGES | {"minItems": 0}}     # an empty history is a valid import: a reset
IMPORT_REQUEST = Draft202012Validator({"type": "object", "required": ["messages"], "properties": IMPORT_FIELDS})


def session_not_found(session_id: str) -> APIError:
    return APIError(404, f"No session found with id '{session_id}'.", param="session_id", code="not_found")


def file_not_found(file_id: str) -> APIError:
    return APIError(404, f"No file found with id '{file_id}'.", param="file_id", code="not_found")


def checked_id(session_id: str) -> str:
    try:
        return check_session_id(session_id)
    except SessionError as error:
        raise invalid_request(error.message, error.param) from None


def session_export(session: Session, files: FileStore) -> dict:
    return {"id": session.id, "object": "session", "created": int(session.created_at),
            "last_used": int(session.last_used_at), "messages": session.messages,
            "files": [file.as_json() for file in files.for_session(session.id)]}


class SessionList:
    def __init__(self, store: SessionStore):
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [
            {"id": info.id, "object": "session", "created": int(info.created_at),
             "last_used": int(info.last_used_at), "message_count": info.message_count}
            for info in self.store.list()]}


class SessionItem:
    def __init__(self, store: SessionStore, files: FileStore, settings: Settings):
        self.store, self.files, self.settings = store, files, settings

    def on_get(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        session = self.store.get(checked_id(session_id))
        if session is None:
            raise session_not_found(session_id)
        resp.media = session_export(session, self.files)

    def on_put(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        checked_id(session_id)
        body = read_json(req, self.settings.max_body_bytes)
        check_fields(body, IMPORT_FIELDS, strict=self.settings.strict_params)
        validate(body, IMPORT_REQUEST)
        check_messages(body["messages"])
        resp.media = session_export(self.store.replace(session_id, body["messages"]), self.files)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        if not self.store.delete(checked_id(session_id)):
            raise session_not_found(session_id)
        resp.media = {"id": session_id, "object": "session.deleted", "deleted": True}


class FileContent:
    def __init__(self, files: FileStore):
        self.files = files

    def on_get(self, req: falcon.Request, resp: falcon.Response, file_id: str) -> None:
        """The bytes as a download (Content-Disposition) that browsers must not sniff: the content was
        written by model-run code, so it is never rendered as a page of this server's origin."""
        found = self.files.get(file_id)
        if found is None:
            raise file_not_found(file_id)
        file, content = found
        resp.content_type = file.mime_type
        resp.downloadable_as = file.name
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.data = content


def add_session_routes(app: falcon.App, store: SessionStore, files: FileStore,
                       settings: Settings = Settings()) -> None:
    app.add_route("/v1/sessions", SessionList(store))
    app.add_route("/v1/sessions/{session_id:path}", SessionItem(store, files, settings))
    app.add_route("/v1/files/{file_id}/content", FileContent(files))
