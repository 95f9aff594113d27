"""The API's OpenAPI 3.1 description (``GET /openapi.json``) and the Swagger UI page that renders it (``GET /docs``).
"""

from __future__ import annotations

from pathlib import Path

from speedtrain.serve.options import ServeOptions


def openapi(options: ServeOptions) -> dict:
    """The OpenAPI 3.1 description of the API (served at /openapi.json, rendered at /docs)."""
    prediction = {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                  "required": ["label", "score"]}
    error = {"description": "error", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}
    request = {"oneOf": [
        {"type": "object", "required": ["texts"], "properties": {"texts": {
            "type": "array", "minItems": 1, "maxItems": options.max_texts,
            "items": {"type": "string", "maxLength": options.max_text_chars}}}},
        {"type": "object", "required": ["text"], "properties": {"text": {
            "type": "string", "maxLength": options.max_text_chars}}}]}
    simple = {"200": {"description": "ok"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "speedtrain serve", "version": _version(),
                 "description": f"Text classification with the bundle {Path(options.bundle).resolve()}"},
        "paths": {
            "/predict": {"post": {
                "summary": "Label and score of each text, in order",
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {
                    "200": {"description": "one prediction per text", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"predictions": {"type": "array", "items": prediction}}}}}},
                    "400": error, "401": error, "413": error, "422": error, "503": error}}},
            "/healthz": {"get": {"summary": "The process answers", "responses": simple}},
            "/readyz": {"get": {"summary": "The model is loaded and the server is not shutting down",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": simple}},
        },
    }


def _version() -> str:
    import speedtrain

    return speedtrain.__version__


DOCS_HTML = b"""<!doctype html>
<html><head><title>speedtrain serve</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""
