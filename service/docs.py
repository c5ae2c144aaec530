"""`/openapi.json` and `/docs`, built from the route table: every route, its form fields, its
response schema and its errors. The page is plain HTML with no scripts (nothing third-party)."""

from __future__ import annotations

import html
import json
from typing import Any, Iterable

from graft import __version__
from graft.service.schemas import ErrorBody

_STATUS = {
    400: "bad image or parameter", 401: "missing or wrong API key or admin token",
    403: "admin routes off: the server has no GRAFT_ADMIN_TOKEN", 404: "unknown model or head",
    405: "wrong method", 409: "conflict: the head exists (no overwrite) or was loaded with --head",
    413: "body too large, or too many images", 429: "too many requests in flight or queued: retry after Retry-After seconds",
    501: "heads are off: the server has no GRAFT_HEADS_DIR",
    503: "warming up, shutting down, or over the latency budget",
}


def _form_schema(fields) -> dict:
    properties = {"images": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "image files (JPEG, PNG, WebP, BMP, GIF, TIFF), one part each"}}
    for name, field in fields.items():
        entry = {"type": "string", "description": field.description}
        if field.repeated:
            entry = {"type": "array", "items": {"type": "string"}, "description": field.description}
        elif field.default not in (None, ""):
            entry["default"] = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
        properties[name] = entry
    return {"type": "object", "required": ["images"], "properties": properties}


def _ref(model, schemas: dict[str, dict]) -> dict:
    """`model`'s schema added to `schemas` (with the models it uses); a reference to it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi_spec(endpoints: Iterable, extra_routes: dict[str, str], *, server: str = "") -> dict:
    """The OpenAPI 3.1 document for `endpoints` plus BentoML's probe routes (`extra_routes`), as
    served at `server` (the URL the reader used)."""
    schemas: dict[str, dict] = {"ErrorBody": ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")}
    paths: dict[str, dict] = {}
    for endpoint in endpoints:
        operation: dict = {"summary": endpoint.summary, "responses": {}}
        content: dict[str, dict] = {}  # /embed, /classify and /heads take a form (images) or JSON (texts)
        if endpoint.form is not None:
            content["multipart/form-data"] = {"schema": _form_schema(endpoint.form)}
        if endpoint.request is not None:
            content["application/json"] = {"schema": _ref(endpoint.request, schemas)}
        if content:
            operation["requestBody"] = {"required": True, "content": content}
        success: dict[str, Any] = {"description": "Created" if endpoint.status == 201 else "OK"}
        if endpoint.response is not None:
            success["content"] = {"application/json": {"schema": _ref(endpoint.response, schemas)}}
        operation["responses"][str(endpoint.status)] = success
        for status in endpoint.errors:
            operation["responses"][str(status)] = {"description": _STATUS[status], "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    for path, summary in extra_routes.items():
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        **({"servers": [{"url": server}]} if server else {}),
        "info": {"title": "graft", "version": __version__,
                 "description": "Batched image classification and embeddings on ONNX Runtime. Every error is "
                                "JSON {error, expected, got}."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def html_page(spec: dict) -> str:
    """A readable page of `spec`: each route with its summary, fields, response schema and errors."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>graft API</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "code,pre{background:#f4f4f4}pre{padding:.5em;overflow-x:auto}h2{border-top:1px solid #ccc;padding-top:.5em}"
        "</style></head><body>",
        f"<h1>graft {html.escape(spec['info']['version'])}</h1><p>{html.escape(spec['info']['description'])}</p>",
        f"<p>Example: <code>curl -F images=@cat.jpg -F top_k=3 {html.escape(_server(spec))}/classify</code>. "
        "The machine-readable description is <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    schemas = spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            out.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2><p>{html.escape(operation['summary'])}</p>")
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            json_body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if json_body:
                name = json_body["schema"]["$ref"].rsplit("/", 1)[1]
                out.append(f"<p>JSON body:</p><pre>{html.escape(json.dumps(schemas[name], indent=1))}</pre>")
            if form:
                properties = form["schema"]["properties"]
                out.append("<p>multipart/form-data fields:</p><ul>")
                for name, field in properties.items():
                    default = f" (default {html.escape(field['default'])})" if "default" in field else ""
                    out.append(f"<li><code>{name}</code>{default}: {html.escape(field['description'])}</li>")
                out.append("</ul>")
            for status, response in operation["responses"].items():
                ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                out.append(f"<p><b>{status}</b> {html.escape(response['description'])}</p>")
                if ref and status.startswith("2"):
                    schema = schemas[ref.rsplit("/", 1)[1]]
                    out.append(f"<pre>{html.escape(json.dumps(schema, indent=1))}</pre>")
    out.append("<h2>Errors</h2><p>Every 4xx and 5xx body is:</p>"
               f"<pre>{html.escape(json.dumps(schemas['ErrorBody'], indent=1))}</pre></body></html>")
    return "".join(out)


def _server(spec: dict) -> str:
    servers = spec.get("servers") or [{"url": "http://localhost:3000"}]
    return servers[0]["url"]
