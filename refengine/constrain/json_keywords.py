"""JSON Schema's validation keywords, by the type of instance they constrain (annotations and keywords
that are not JSON Schema's are ignored, as the spec says)."""
from __future__ import annotations

TYPES = ("null", "boolean", "object", "array", "string", "number")     # "integer" is a kind of number
DEPENDENCY_KEYS = ("dependencies", "dependentRequired", "dependentSchemas")
CONDITIONAL = ("if", "then", "else")
UNSUPPORTED = ("unevaluatedProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
               "$dynamicRef", "$recursiveRef")
OBJECT_KEYS = {"properties", "required", "additionalProperties", "patternProperties", "minProperties",
               "maxProperties", "propertyNames", *DEPENDENCY_KEYS}
ARRAY_KEYS = {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}
STRING_KEYS = {"minLength", "maxLength", "pattern", "format"}
NUMBER_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
VALIDATION = OBJECT_KEYS | ARRAY_KEYS | STRING_KEYS | NUMBER_KEYS | set(UNSUPPORTED) | set(CONDITIONAL) | {
    "type", "enum", "const", "allOf", "anyOf", "oneOf", "$ref", "not"}
TYPE_KEYS = {"object": OBJECT_KEYS, "array": ARRAY_KEYS, "string": STRING_KEYS, "number": NUMBER_KEYS,
             "integer": NUMBER_KEYS, "boolean": set(), "null": set()}
