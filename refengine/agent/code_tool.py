"""The `execute_python` built-in tool: the model's code, run in the session's sandbox.

The tool itself is thin: it hands `code` to `context.services["sandbox"]` (an object with `run(code) ->
dict`, the session's persistent interpreter, which the runtime provides: `sandbox.PythonSandbox` in the
server) and returns its result JSON (`{status, stdout, stderr, exception, result, execution_time_ms}`).
Isolation, limits and timeouts are the sandbox's business, not this module's.

Its arguments schema is strict: `{"code": string, "outputs": [{"name", "format"?}]?}`. `outputs` is
optional and stays out of `required`: the constrainer compiles optional properties directly (json_schema.py
gives each declared property a required flag), so OpenAI's "every property required, optional ones
nullable" dialect is not needed for our own schema. `outputs` is offered only when the request asks for
files, and its names are then exactly those files (`parameters_for`): SmolLM2 offered a free list writes
invented names into it and runs out of tokens before its call closes.

When the request asks for output files, the description names them (`description_for`), so the model knows
what to write before it writes code, and after each run the result says which of them exist in the session
folder (`files: [{name, produced}]`), so the model learns a file is missing while it can still fix it.
Collecting the files for the client is the runtime's job (files.py), not this tool's.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from .files import check_file_name
from .registry import BuiltinTool, ToolContext
from .sessions import SessionError

EXECUTE_PYTHON = "execute_python"
SANDBOX_SERVICE = "sandbox"

CODE_ONLY = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"],
             "additionalProperties": False}


def parameters_for(files: Iterable = ()) -> dict:
    """The strict arguments schema. `outputs` is offered only when the request wants files, and then names
    only those files: a small model offered a free `outputs` list fills it with invented names (and spends
    its tokens there) instead of writing code."""
    names = [entry["name"] for entry in file_entries(files)]
    if not names:
        return CODE_ONLY
    output = {"type": "object", "properties": {"name": {"enum": names}, "format": {"type": "string"}},
              "required": ["name"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"code": {"type": "string"}, "outputs": {"type": "array", "items": output}},
            "required": ["code"], "additionalProperties": False}


BASE_DESCRIPTION = (
    "Run Python 3 code in this conversation's persistent sandboxed interpreter: variables, imports and files "
    "survive between calls. There is no network access; the current directory is the session's working "
    "folder and the only writable place. Print what you need to see: the call returns the status "
    "(success, error, timeout or denied), stdout, stderr and any exception.")


def file_entries(files: Iterable) -> list[dict]:
    """Requested files as [{"name", "format"?, "description"?}]: names, or objects as `files.requested_files`
    returns them."""
    return [{"name": f} if isinstance(f, str) else dict(f) for f in files]


def description_for(files: Iterable = ()) -> str:
    """The tool description, naming the files the request wants produced (none: the base description)."""
    entries = file_entries(files)
    if not entries:
        return BASE_DESCRIPTION
    lines = [BASE_DESCRIPTION, "", "You must produce these files in the current directory, and list them in "
             "`outputs` of the call that writes them:"]
    for entry in entries:
        line = f"- {entry['name']}"
        if entry.get("format"):
            line += f" (format: {entry['format']})"
        if entry.get("description"):
            line += f": {entry['description']}"
        lines.append(line)
    return "\n".join(lines)


def execute_python_tool(files: Iterable = ()) -> BuiltinTool:
    """The tool, its description naming `files` (a request's requested outputs) when there are any."""
    entries = file_entries(files)
    required = [entry["name"] for entry in entries]

    def run(arguments: dict, context: ToolContext) -> dict:
        return run_code(arguments, context, required)

    return BuiltinTool(EXECUTE_PYTHON, description_for(entries), parameters_for(entries), run)


def run_code(arguments: dict, context: ToolContext, required_files: Iterable[str] = ()) -> dict:
    """Run `arguments["code"]` in the session's sandbox; with a session folder, note which of the requested
    and declared output files exist after the run."""
    sandbox = context.services.get(SANDBOX_SERVICE)
    if sandbox is None:
        return {"status": "error", "exception": "code execution is not available here (no sandbox)"}
    result = dict(sandbox.run(arguments["code"]))
    names = list(dict.fromkeys([*required_files, *(o["name"] for o in arguments.get("outputs") or ())]))
    if names and context.folder is not None:
        result["files"] = [{"name": name, "produced": produced(Path(context.folder), name)} for name in names]
    return result


def produced(folder: Path, name: str) -> bool:
    """Whether `name` is a regular file directly in `folder`. The folder is written by sandboxed code and the
    name by the model: only plain names count and links are not followed, so this never reveals anything
    about the host outside the folder."""
    try:
        check_file_name(name, "outputs")
    except SessionError:
        return False
    try:
        return stat.S_ISREG(os.lstat(folder / name).st_mode)
    except OSError:
        return False


EXECUTE_PYTHON_TOOL = execute_python_tool()
