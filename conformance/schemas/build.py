"""Generate the JSON Schemas of OpenAI's response objects from the OpenAPI description.

    python -m conformance.schemas.build [path/to/openai-openapi.json]

Each target component becomes one self-contained JSON Schema file next to this script: every `$ref` is
inlined, OpenAPI's `nullable: true` becomes "or null" (`anyOf [..., {"type": "null"}]`), and
documentation-only keys are dropped. The Responses API's objects refer to hundreds of components, many
times over (and to some recursively), so theirs keep the references: each component they reach becomes
one entry of the file's `$defs`. The generated files are committed so the suite runs without the spec.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_SPEC = Path("/work/shared/reference/openai-openapi.json")
HERE = Path(__file__).resolve().parent

TARGETS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
    "CreateEmbeddingResponse",
)
DEFS_TARGETS = ("Response", "ResponseStreamEvent")      # built with `$defs` (see above)

# Keys that describe rather than constrain; `format` is dropped because OpenAI uses private formats
# ("unixtime") that no validator knows, and `discriminator` is OpenAPI-only.
DOC_ONLY_KEYS = {"description", "title", "example", "examples", "deprecated", "default", "format",
                 "discriminator", "externalDocs", "readOnly", "writeOnly"}
REF_PREFIX = "#/components/schemas/"


def to_json_schema(node, components: dict, stack: tuple[str, ...] = ()):
    """Return `node` with refs inlined and `nullable` translated; raises on a reference cycle."""
    if isinstance(node, list):
        return [to_json_schema(item, components, stack) for item in node]
    if not isinstance(node, dict):
        return node
    nullable = node.get("nullable") is True
    if "$ref" in node:
        name = node["$ref"].removeprefix(REF_PREFIX)
        if name in stack:
            raise ValueError(f"reference cycle through {' -> '.join(stack + (name,))}")
        resolved = to_json_schema(components[name], components, stack + (name,))
    else:
        resolved = {key: (value if key in ("enum", "const", "required") else
                          {prop: to_json_schema(sub, components, stack) for prop, sub in value.items()}
                          if key in ("properties", "patternProperties") else
                          to_json_schema(value, components, stack))
                    for key, value in node.items()
                    if key not in DOC_ONLY_KEYS and key != "nullable" and not key.startswith("x-")}
    return {"anyOf": [resolved, {"type": "null"}]} if nullable else resolved


def with_defs(node):
    """`node` with refs pointing into `$defs` and `nullable` translated (the components stay separate)."""
    if isinstance(node, list):
        return [with_defs(item) for item in node]
    if not isinstance(node, dict):
        return node
    nullable = node.get("nullable") is True
    if "$ref" in node:
        resolved = {"$ref": "#/$defs/" + node["$ref"].removeprefix(REF_PREFIX)}
    else:
        resolved = {key: (value if key in ("enum", "const", "required") else
                          {prop: with_defs(sub) for prop, sub in value.items()}
                          if key in ("properties", "patternProperties") else with_defs(value))
                    for key, value in node.items()
                    if key not in DOC_ONLY_KEYS and key != "nullable" and not key.startswith("x-")}
    return {"anyOf": [resolved, {"type": "null"}]} if nullable else resolved


def reached(name: str, components: dict) -> list[str]:
    """`name` and every component it refers to, directly or not."""
    found, pending = [], [name]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.append(current)
        text = json.dumps(components[current])
        pending += [ref.split('"')[0] for ref in text.split(f'"$ref": "{REF_PREFIX}')[1:]]
    return sorted(found)


def build(spec: dict) -> dict[str, dict]:
    components = spec["components"]["schemas"]
    schemas = {name: {"$schema": "https://json-schema.org/draft/2020-12/schema",
                      "title": name,
                      **to_json_schema(components[name], components, (name,))}
               for name in TARGETS}
    for name in DEFS_TARGETS:
        schemas[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name,
                         "$ref": f"#/$defs/{name}",
                         "$defs": {other: with_defs(components[other]) for other in reached(name, components)}}
    return schemas


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0]) if argv else DEFAULT_SPEC
    spec = json.loads(spec_path.read_text())
    for name, schema in build(spec).items():
        (HERE / f"{name}.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
