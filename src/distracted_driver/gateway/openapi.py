"""The API's OpenAPI 3 document and a self-contained docs page that renders it.

One document for both backends: the local gateway serves it at
``/openapi.json``; its ``x-amazon-apigateway-binary-media-types`` lists the
same binary types the gateway (and the Terraform API) base64-encode.
"""

from __future__ import annotations

from distracted_driver.data.layout import CLASSES, DESCRIPTIONS
from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES
from distracted_driver.gateway.events import BINARY_MEDIA_TYPES


def _error(description: str, example: dict) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}, "example": example}},
    }


def openapi_document(server_url: str | None = None, max_image_bytes: int | None = None) -> dict:
    """The document; ``max_image_bytes`` defaults to the limit the Lambda handler applies."""
    max_image_bytes = max_image_bytes or INVOKE_ENDPOINT_MAX_BYTES
    image_body = {"schema": {"type": "string", "format": "binary", "maxLength": max_image_bytes}}
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "Distracted driver classifier",
            "version": "1.0.0",
            "description": (
                "Post a dashboard-camera frame (JPEG or PNG); get the driver's activity: one of ten "
                "classes c0..c9, its label, the confidence and all ten probabilities. "
                "Every call needs an API key in the `x-api-key` header."
            ),
        },
        "servers": [{"url": server_url}] if server_url else [],
        "x-amazon-apigateway-binary-media-types": list(BINARY_MEDIA_TYPES),
        "security": [{"api_key": []}],
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Classify one image",
                    "requestBody": {
                        "required": True,
                        "content": {
                            **{media_type: image_body for media_type in BINARY_MEDIA_TYPES},
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Base64Image"},
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The prediction",
                            "headers": {
                                "X-Model-Version": {"schema": {"type": "string"}, "description": "model that answered"},
                                "X-Request-Id": {"schema": {"type": "string"}},
                            },
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}},
                        },
                        "400": _error(
                            "Bad request: no body, invalid base64 or JSON, or an image that cannot be decoded",
                            {"error": "InvalidImage", "message": "cannot decode the image", "request_id": "…"},
                        ),
                        "403": _error("Missing or unknown API key", {"message": "Forbidden"}),
                        "413": _error(
                            f"The image is over {max_image_bytes} bytes (or its pixels over the limit)",
                            {"error": "PayloadTooLarge", "message": "the image is 7000000 bytes; …"},
                        ),
                        "415": _error(
                            "Unsupported Content-Type",
                            {"error": "UnsupportedMediaType", "message": "unsupported Content-Type 'text/plain'; …"},
                        ),
                        "429": _error(
                            "Over the usage plan's rate or burst, or the model is busy",
                            {"message": "Too Many Requests"},
                        ),
                        "502": _error(
                            "The model endpoint failed; the request id helps find it in the logs",
                            {"error": "ModelError", "message": "the model failed on this request", "request_id": "…"},
                        ),
                        "503": _error(
                            "The model is overloaded or unavailable; retry shortly",
                            {"error": "ServiceUnavailable", "message": "the model is overloaded; retry shortly"},
                        ),
                        "504": _error(
                            "The model endpoint did not answer in time",
                            {"error": "EndpointTimeout", "message": "the model endpoint did not answer in time"},
                        ),
                    },
                }
            }
        },
        "components": {
            "securitySchemes": {"api_key": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": {
                "Base64Image": {
                    "type": "object",
                    "description": "The first version of this API's body; the answer then also carries `payload`.",
                    "required": ["base64Image"],
                    "properties": {"base64Image": {"type": "string", "format": "byte"}},
                },
                "Prediction": {
                    "type": "object",
                    "required": ["class", "label", "confidence", "probabilities", "model_version"],
                    "properties": {
                        "class": {"type": "string", "enum": list(CLASSES)},
                        "label": {"type": "string", "enum": [DESCRIPTIONS[c] for c in CLASSES]},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "probabilities": {
                            "type": "object",
                            "properties": {c: {"type": "number"} for c in CLASSES},
                            "description": "; ".join(f"{c}: {DESCRIPTIONS[c]}" for c in CLASSES),
                        },
                        "model_version": {"type": "string", "nullable": True},
                        "request_id": {"type": "string"},
                        "payload": {
                            "type": "array",
                            "items": {"type": "number"},
                            "minItems": 10,
                            "maxItems": 10,
                            "description": "The ten probabilities in class order; only for a `base64Image` body.",
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "error": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                },
            },
        },
    }
    return document


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Distracted driver API</title>
<style>
 body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
 code, pre { font-family: ui-monospace, monospace; background: #f4f4f4; border-radius: 3px; }
 pre { padding: .6rem; overflow-x: auto; } .method { font-weight: bold; color: #fff; background: #2a7; padding: .1rem .4rem; border-radius: 3px; }
 table { border-collapse: collapse; width: 100%; } td, th { border: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
 fieldset { border: 1px solid #ddd; } label { display: block; margin: .4rem 0; }
</style>
</head>
<body>
<h1 id="title">API</h1>
<p id="description"></p>
<div id="paths"></div>
<h2>Try it</h2>
<fieldset>
 <label>API key <input id="key" size="50" autocomplete="off"></label>
 <label>Image (JPEG or PNG) <input id="file" type="file" accept="image/jpeg,image/png"></label>
 <button id="send">POST /predict</button>
</fieldset>
<pre id="result">(the answer appears here)</pre>
<h2>Schemas</h2>
<div id="schemas"></div>
<script>
"use strict";
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
function row(table, cells) { const tr = el("tr"); cells.forEach(c => tr.appendChild(el("td", c))); table.appendChild(tr); }
fetch("openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("description").textContent = doc.info.description;
  const paths = document.getElementById("paths");
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const h = el("h2"); h.appendChild(el("span", method.toUpperCase(), "method")); h.appendChild(document.createTextNode(" " + path + " \u2014 " + op.summary));
      paths.appendChild(h);
      paths.appendChild(el("p", "Request body, one of:"));
      const bodies = el("table"); row(bodies, ["Content-Type", "Schema"]);
      for (const [type, media] of Object.entries(op.requestBody.content)) row(bodies, [type, JSON.stringify(media.schema)]);
      paths.appendChild(bodies);
      paths.appendChild(el("p", "Responses:"));
      const responses = el("table"); row(responses, ["Status", "Meaning", "Example"]);
      for (const [status, response] of Object.entries(op.responses)) {
        const media = (response.content || {})["application/json"] || {};
        row(responses, [status, response.description, media.example ? JSON.stringify(media.example) : ""]);
      }
      paths.appendChild(responses);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    schemas.appendChild(el("h3", name));
    schemas.appendChild(el("pre", JSON.stringify(schema, null, 2)));
  }
});
document.getElementById("send").addEventListener("click", async () => {
  const file = document.getElementById("file").files[0];
  const out = document.getElementById("result");
  if (!file) { out.textContent = "choose an image first"; return; }
  const response = await fetch("predict", { method: "POST", body: file,
    headers: { "Content-Type": file.type || "image/jpeg", "x-api-key": document.getElementById("key").value } });
  out.textContent = response.status + " " + response.statusText + "\\n" + JSON.stringify(await response.json(), null, 2);
});
</script>
</body>
</html>
"""
