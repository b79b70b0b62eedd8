"""Extract the request-body schemas the simulators validate against from the vendors' OpenAPI files.

The simulators in `tidings.testing` ship with tidings, so what they validate against has to be
inside the package: this script reads the official specs (../shared/contracts/specs/<vendor>/)
and writes only the schemas each simulator needs, with the component schemas they reference,
to src/tidings/testing/schemas/<vendor>.json.

    python tools/extract_schemas.py [--specs DIR] [vendor ...]

Each vendor has its own section below (one function registered in EXTRACTORS).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ROOT.parent / "shared" / "contracts" / "specs"
OUT = ROOT / "src" / "tidings" / "testing" / "schemas"

EXTRACTORS: dict[str, Callable[[Path], dict[str, Any]]] = {}


# ------------------------------------------------------------------- mailchimp-transactional


def mailchimp_transactional(specs: Path) -> dict[str, Any]:
    """Mailchimp Transactional: messages/send-template (OAS 3.1 file), with one correction.

    The spec's `ApiKey` schema (mixed into every request through `allOf`) says
    `additionalProperties: false`; under JSON Schema that sees only its own `key`, so the spec as
    published refuses every real request (`template_name`, `message` ... "were unexpected"). The
    evident intent, a closed body, is kept by moving it to `unevaluatedProperties: false` on the
    request itself, which sees every property the `allOf` branches declare.
    """
    spec = json.loads((specs / "mailchimp-transactional" / "transactional.openapi.json").read_text())
    components = spec["components"]["schemas"]
    body = spec["paths"]["/messages/send-template"]["post"]["requestBody"]
    operations = {"POST /messages/send-template": body["content"]["application/json"]["schema"]}
    keep: dict[str, Any] = {}
    pending = [name for schema in operations.values() for name in _mct_refs(schema)]
    while pending:
        name = pending.pop()
        if name not in keep:
            keep[name] = copy.deepcopy(components[name])
            pending.extend(_mct_refs(keep[name]))
    keep["ApiKey"].pop("additionalProperties", None)
    keep["MessagesSendTemplateRequest"]["unevaluatedProperties"] = False
    return {
        "source": "mailchimp/mailchimp-client-lib-codegen @ 69fce606 spec/transactional.openapi.json "
        f"(OAS {spec['openapi']}, info {spec['info']['version']})",
        "corrections": [
            "ApiKey.additionalProperties: false removed (inside allOf it refused every request); "
            "MessagesSendTemplateRequest.unevaluatedProperties: false added instead"
        ],
        "operations": operations,
        "components": {"schemas": dict(sorted(keep.items()))},
    }


def _mct_refs(node: Any) -> list[str]:
    """Names of the component schemas `node` refers to directly (`#/components/schemas/<name>`)."""
    if isinstance(node, dict):
        found = []
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.append(ref.rsplit("/", 1)[1])
        for value in node.values():
            found.extend(_mct_refs(value))
        return found
    if isinstance(node, list):
        return [name for item in node for name in _mct_refs(item)]
    return []


EXTRACTORS["mailchimp_transactional"] = mailchimp_transactional


# ---------------------------------------------------------------------------------- klaviyo

KLAVIYO_OPERATIONS = {
    # "METHOD path": spec file (the per-operation files under specs/klaviyo/)
    "POST /api/events": "api_create_event.json",
    "POST /api/profile-import": "api_create_or_update_profile.json",
    "POST /api/data-privacy-deletion-jobs": "api_request_profile_deletion.json",
}


def klaviyo(specs: Path) -> dict[str, Any]:
    """Klaviyo: the JSON:API request bodies of create event, profile import, deletion job.

    OpenAPI 3.0 `nullable: true` becomes a `null` type so that Draft 2020-12 accepts `null`
    where Klaviyo does (a `null` attribute clears a profile field). Examples are dropped.
    """
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for operation, filename in KLAVIYO_OPERATIONS.items():
        spec = json.loads((specs / "klaviyo" / filename).read_text())
        info = spec.get("info", {})
        method, path = operation.split(" ", 1)
        op = spec["paths"][path][method.lower()]
        content = op["requestBody"]["content"]
        media = next(key for key in content if "json" in key)
        body = content[media]["schema"]
        ratelimit = op.get("x-klaviyo-ratelimit", {})
        operations[operation] = {
            "operationId": op.get("operationId"),
            "media_type": media,
            "schema": _klaviyo_openapi_to_jsonschema(body),
            "ratelimit": ratelimit,
        }
        components = spec.get("components", {}).get("schemas", {})
        for name in _klaviyo_referenced(body, components):
            schemas[name] = _klaviyo_openapi_to_jsonschema(components[name])
    return {
        "source": "klaviyo/openapi openapi/stable/apis/*.json (OAS 3.0.2)",
        "revision": str(info.get("version", "")),
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def _klaviyo_referenced(node: Any, components: dict[str, Any]) -> list[str]:
    """Names of the component schemas `node` references, transitively."""
    found: list[str] = []
    todo = [node]
    while todo:
        current = todo.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.append(name)
                    todo.append(components[name])
            todo.extend(current.values())
        elif isinstance(current, list):
            todo.extend(current)
    return found


def _klaviyo_openapi_to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [_klaviyo_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: _klaviyo_openapi_to_jsonschema(value)
        for key, value in node.items()
        if key not in ("example", "nullable")
    }
    if node.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif kind is None:
            # `$ref`, `oneOf`, ...: the value is that, or null
            description = out.pop("description", None)
            out = {"anyOf": [out, {"type": "null"}]}
            if description is not None:
                out["description"] = description
    return copy.deepcopy(out)


EXTRACTORS["klaviyo"] = klaviyo


# ---------------------------------------------------------------------------------- sendgrid

SENDGRID_OPERATIONS = {
    # "METHOD path": spec file under specs/sendgrid/
    "PUT /v3/marketing/contacts": "tsg_mc_contacts_v3.json",
    "POST /v3/marketing/contacts/search/emails": "tsg_mc_contacts_v3.json",
    "POST /v3/mail/send": "tsg_mail_v3.json",
}


def sendgrid(specs: Path) -> dict[str, Any]:
    """SendGrid: contacts upsert, contacts search by email, mail send (twilio/sendgrid-oai, OAS 3.1).

    No corrections. One trap is kept as published: the message-level `custom_args` is declared a
    string, so tidings puts its `custom_args` in the personalization, where the spec declares an
    object. `nullable: true` (still used in these 3.1 files) becomes a `null` type.
    """
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for operation, filename in SENDGRID_OPERATIONS.items():
        spec = json.loads((specs / "sendgrid" / filename).read_text())
        method, path = operation.split(" ", 1)
        op = spec["paths"][path][method.lower()]
        body = op["requestBody"]
        if "$ref" in body:  # mail send's body sits under components/requestBodies
            body = spec["components"]["requestBodies"][body["$ref"].rsplit("/", 1)[1]]
        schema = body["content"]["application/json"]["schema"]
        operations[operation] = {
            "operationId": op.get("operationId"),
            "spec": filename,
            "schema": _sendgrid_nullable(schema),
        }
        components = spec["components"]["schemas"]
        for name in _sendgrid_referenced(schema, components):
            converted = _sendgrid_nullable(components[name])
            if schemas.setdefault(name, converted) != converted:  # one namespace for both files
                raise SystemExit(f"sendgrid: component schema {name} differs between spec files")
    return {
        "source": "twilio/sendgrid-oai @ dbe0e0d2 (2026-01-22) spec/json/tsg_mc_contacts_v3.json, "
        "tsg_mail_v3.json (OAS 3.1.0)",
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def _sendgrid_referenced(node: Any, components: dict[str, Any]) -> list[str]:
    """Names of the component schemas `node` references, transitively (no other `$ref` expected)."""
    found: list[str] = []
    todo = [node]
    while todo:
        current = todo.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str):
                if not ref.startswith("#/components/schemas/"):
                    raise SystemExit(f"sendgrid: unexpected $ref {ref}")
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.append(name)
                    todo.append(components[name])
            todo.extend(current.values())
        elif isinstance(current, list):
            todo.extend(current)
    return found


def _sendgrid_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_sendgrid_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: _sendgrid_nullable(value) for key, value in node.items() if key not in ("example", "nullable")
    }
    if node.get("nullable") is True:
        if not isinstance(out.get("type"), str):
            raise SystemExit("sendgrid: nullable without a single type")
        out["type"] = [out["type"], "null"]
    return out


EXTRACTORS["sendgrid"] = sendgrid


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, default=DEFAULT_SPECS)
    parser.add_argument("vendors", nargs="*", help=f"default: all of {sorted(EXTRACTORS)}")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    for vendor in args.vendors or sorted(EXTRACTORS):
        if vendor not in EXTRACTORS:
            parser.error(f"unknown vendor {vendor!r}")
        extracted = EXTRACTORS[vendor](args.specs)
        target = OUT / f"{vendor}.json"
        target.write_text(json.dumps(extracted, indent=1, sort_keys=False) + "\n")
        print(f"{vendor}: {target.relative_to(ROOT)} ({target.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
