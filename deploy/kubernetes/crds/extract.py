"""Store one version of a CustomResourceDefinition's schema for the manifest tests (README.md here).

    python deploy/kubernetes/crds/extract.py CRD.yaml VERSION SOURCE_URL > deploy/kubernetes/crds/NAME.json

Keeps the version's `openAPIV3Schema` without `description`s (documentation) and without `status`
(written by controllers, never by a manifest), and writes each subschema that occurs more than once
(the CRDs inline the same PodSpec and Container many times) once under `$defs`, referenced where it
occurred. Validation is unchanged; the files are a quarter of the size.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from typing import Any, Callable

import yaml

SHARED_MIN_CHARS = 2000  # smaller repeats cost less than a reference's indirection is worth
_SCHEMA_MAPS = ("properties", "patternProperties")  # name -> subschema
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")


def subschemas(schema: dict) -> list[dict]:
    """The schemas directly inside `schema` (not other dicts, such as a `properties` map itself)."""
    found = [sub for key in _SCHEMA_MAPS for sub in schema.get(key, {}).values()]
    found += [sub for key in _SCHEMA_LISTS for sub in schema.get(key, [])]
    return found + [schema[key] for key in _SCHEMA_VALUES if isinstance(schema.get(key), dict)]


def _key(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def map_subschemas(schema: dict, change: Callable[[dict], dict]) -> dict:
    """A copy of `schema` with `change` applied to each schema directly inside it (see `subschemas`)."""
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if key in out:
            out[key] = {name: change(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if key in out:
            out[key] = [change(sub) for sub in out[key]]
    for key in _SCHEMA_VALUES:
        if isinstance(out.get(key), dict):
            out[key] = change(out[key])
    return out


def _strip(schema: dict) -> dict:
    return map_subschemas({key: value for key, value in schema.items() if key != "description"}, _strip)


def share_repeats(schema: dict) -> dict:
    """`schema` with every large subschema that occurs twice or more moved to `$defs`."""
    counts: Counter[str] = Counter()
    stack = subschemas(schema)
    while stack:
        sub = stack.pop()
        key = _key(sub)
        if len(key) >= SHARED_MIN_CHARS:
            counts[key] += 1
        stack += subschemas(sub)
    defs: dict[str, Any] = {}

    def rewrite(sub: dict, top: bool = False) -> dict:
        key = _key(sub)
        if not top and counts[key] > 1:
            name = hashlib.sha256(key.encode()).hexdigest()[:12]
            if name not in defs:
                defs[name] = {}  # reserved before recursing: a repeat nested in itself is still one entry
                defs[name] = rewrite(sub, top=True)
            return {"$ref": f"#/$defs/{name}"}
        return map_subschemas(sub, rewrite)

    shared = rewrite(schema, top=True)
    if defs:
        shared["$defs"] = dict(sorted(defs.items()))
    return shared


def extract(crd: dict, version: str, source: str) -> dict:
    """The stored document: which objects it validates, where it came from, and the schema."""
    names = crd["spec"]["names"]
    served = {entry["name"]: entry for entry in crd["spec"]["versions"]}
    if version not in served:
        raise SystemExit(f"expected a version of {names['kind']} among {sorted(served)}, got {version!r}")
    schema = _strip(served[version]["schema"]["openAPIV3Schema"])
    schema.get("properties", {}).pop("status", None)
    return {
        "apiVersion": f"{crd['spec']['group']}/{version}",
        "kind": names["kind"],
        "source": source,
        "schema": share_repeats(schema),
    }


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    path, version, source = argv
    with open(path) as handle:
        crd = yaml.safe_load(handle)
    json.dump(extract(crd, version, source), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
