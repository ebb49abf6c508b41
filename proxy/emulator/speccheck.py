"""The emulator's answers checked against Vipps' OpenAPI files, while it runs.

With ``VIPPS_EMULATOR_CHECK_SPECS`` naming a folder of OpenAPI files (the tests set it
to ``tests/specs``), every answer to an operation those files describe is checked
before it leaves: its status must be documented for the operation (or fall under
``default``), its media type must be one the operation answers, and its JSON body
must match the schema. A violation is logged as ``emulator_spec_violation`` and the
answer is replaced by a 500 problem naming it, so the test at hand fails loudly.
With ``VIPPS_EMULATOR_SPEC_LOG`` naming a file, one JSON line per checked answer is
appended to it (operation, status, and the violation if any): the tests' session
end reads it, which also covers emulators started as processes.

Answers the emulator acts out as faults are not checked: they are meant to be wrong.
The checker needs PyYAML, jsonschema and referencing (dev dependencies); the emulator
imports this module only when the variable is set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jsonschema
import orjson
import structlog
import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware
from referencing import Registry
from referencing.jsonschema import DRAFT4
from yarl import URL

from .answers import PROBLEM_CONTENT_TYPE, problem
from .app import SPECS_ENV
from .injection import Handler
from .keys import FAULTED_KEY

LOG_ENV: Final = "VIPPS_EMULATOR_SPEC_LOG"
# The files checked against, and the path prefix their ``servers`` put before paths.
SPEC_FILES: Final = (
    "epayment.local.yml",
    "vipps-ecom-api.yaml",
    "webhooks.swagger.yaml",
    "accesstoken.swagger.yaml",
)
VIOLATION: Final = "emulator_spec_violation"

logger = structlog.get_logger(__name__)

Spec = dict[str, Any]


def erratum_epayment_adjust_content_type(spec: Spec) -> None:
    """ePayment: a capture, cancel or refund answer is JSON, not a problem, when it
    succeeds. The file lists the 200 ``ModificationResponse`` under
    ``application/problem+json``; Vipps answers it (and its SDK reads it) as JSON."""
    responses = spec.get("components", {}).get("responses", {})
    adjust = responses.get("AdjustResponse")
    if adjust is not None and PROBLEM_CONTENT_TYPE in adjust.get("content", {}):
        adjust["content"] = {"application/json": adjust["content"][PROBLEM_CONTENT_TYPE]}


def erratum_epayment_event_name(spec: Spec) -> None:
    """ePayment: an event's action is in ``name``, the property the schema defines;
    ``PaymentEvent.required`` lists ``paymentAction``, which it never defines."""
    event = spec.get("components", {}).get("schemas", {}).get("PaymentEvent")
    if event is not None:
        event["required"] = ["name" if r == "paymentAction" else r for r in event["required"]]


def erratum_token_numbers(spec: Spec) -> None:
    """Access Token: the time fields may be JSON numbers. The file types them as strings
    (as the 0.1.1 document's answer has them) while its own examples are numbers, and
    ``/miami/v1/token`` is OAuth2, whose ``expires_in`` is a number (RFC 6749 §5.1)."""
    schemas = spec.get("components", {}).get("schemas", {})
    for answer in ("AuthorizationTokenResponse", "TokenResponse"):
        properties = schemas.get(answer, {}).get("properties", {})
        for name in ("expires_in", "ext_expires_in", "expires_on", "not_before"):
            if name in properties:
                properties[name]["type"] = ["string", "integer"]


def erratum_gateway_errors(spec: Spec) -> None:
    """Every API: a 401 or 403 from the API Management gateway in front of the APIs
    is ``{"statusCode", "message"}``, as the eCom guide's "Errors" section and the
    Access Token guide show; the files document these answers only in part, or as
    ``ErrorFromAzure``, which no gateway answer has ever had the shape of."""
    spec.setdefault("x-gateway-statuses", ["401", "403"])


ERRATA: Final[tuple[Callable[[Spec], None], ...]] = (
    erratum_epayment_adjust_content_type,
    erratum_epayment_event_name,
    erratum_token_numbers,
    erratum_gateway_errors,
)
GATEWAY_ERROR: Final[Spec] = {
    "type": "object",
    "required": ["statusCode", "message"],
    "properties": {"statusCode": {"type": "integer"}, "message": {"type": "string"}},
}


@dataclass(frozen=True)
class Operation:
    """One operation of one spec file: where to find its responses."""

    name: str
    method: str
    pattern: re.Pattern[str]
    responses: dict[str, Any]
    spec: SpecFile


@dataclass(frozen=True)
class SpecFile:
    uri: str
    document: Spec
    registry: Registry[Any]


class SpecChecker:
    """The operations of the spec files in ``folder``; `check` judges one answer."""

    def __init__(self, folder: Path) -> None:
        registry: Registry[Any] = Registry()
        documents: list[tuple[str, Spec]] = []
        for path in sorted(folder.glob("*.y*ml")):
            document = _openapi_to_jsonschema(yaml.safe_load(path.read_text("utf-8")))
            for erratum in ERRATA:
                erratum(document)
            uri = path.absolute().as_uri()
            registry = registry.with_resource(uri, DRAFT4.create_resource(document))
            if path.name in SPEC_FILES:
                documents.append((uri, document))
        self.operations = [
            op for uri, doc in documents for op in _operations(SpecFile(uri, doc, registry))
        ]

    def find(self, method: str, path: str) -> Operation | None:
        """The operation answering ``method`` ``path``, if a spec file describes it."""
        for operation in self.operations:
            if operation.method == method.lower() and operation.pattern.fullmatch(path):
                return operation
        return None

    def check(self, operation: Operation, status: int, content_type: str, body: bytes) -> str:
        """The violation in this answer, or ``""`` when it conforms."""
        gateway = str(status) in operation.spec.document["x-gateway-statuses"]
        if gateway and _loads(body) is not None and _conforms(GATEWAY_ERROR, _loads(body)):
            return ""
        documented = _response(operation, status)
        if documented is None and status >= 400:
            documented = self.error_shape(operation.spec)
        if documented is None:
            return f"status {status} is not documented for {operation.name}"
        content = documented.get("content") or {}
        if not content:
            return ""  # the spec does not describe this answer's body
        media = _media(content, content_type)
        if media is None:
            return (
                f"{status} answered {content_type or 'no content type'}; the spec: {list(content)}"
            )
        schema = media.get("schema")
        if schema is None:
            return ""
        document = _loads(body)
        if document is None:
            return f"{status} body is not JSON"
        return _schema_error(operation.spec, schema, document)

    def error_shape(self, spec: SpecFile) -> dict[str, Any] | None:
        """The error answer ``spec`` documents first (a 4xx with a body), by which an
        error status an operation does not list is judged: the ePayment file lists 404
        for capture but not for get, which answers it all the same."""
        for operation in self.operations:
            for status in operation.responses:
                found = _response(operation, int(status)) if status.isdigit() else None
                if (
                    operation.spec is spec
                    and status.startswith("4")
                    and found
                    and found.get("content")
                ):
                    return found
        return None


def _operations(spec: SpecFile) -> Iterator[Operation]:
    servers = spec.document.get("servers") or [{"url": ""}]
    prefix = URL(servers[0]["url"]).path.rstrip("/")
    for template, item in spec.document.get("paths", {}).items():
        if "$ref" in item:
            continue  # the eCom merchant endpoints: Vipps calls them, it never answers them
        pattern = re.compile(re.escape(prefix + template).replace(r"\{", "{").replace(r"\}", "}"))
        pattern = re.compile(re.sub(r"\{[^}/]+\}", "[^/]+", pattern.pattern))
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                name = str(operation.get("operationId", f"{method.upper()} {template}"))
                yield Operation(name, method, pattern, operation["responses"], spec)


def _response(operation: Operation, status: int) -> dict[str, Any] | None:
    responses = operation.responses
    found = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    found = found or responses.get("default")
    if isinstance(found, dict) and "$ref" in found:
        return _resolve(operation.spec, found["$ref"])
    return found if isinstance(found, dict) else None


def _resolve(spec: SpecFile, ref: str) -> dict[str, Any]:
    resolved: dict[str, Any] = spec.registry.resolver(base_uri=spec.uri).lookup(ref).contents
    return resolved


def _media(content: dict[str, Any], content_type: str) -> dict[str, Any] | None:
    wanted = content_type.split(";")[0].strip().lower()
    for media, described in content.items():
        if media.split(";")[0].strip().lower() in (wanted, "*/*"):
            return described if isinstance(described, dict) else {}
    return None


def _schema_error(spec: SpecFile, schema: Any, document: Any) -> str:
    validator = jsonschema.Draft4Validator(_absolute_refs(schema, spec.uri), registry=spec.registry)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path) or "(the body)"
    return f"{where}: {error.message[:300]}"


def _absolute_refs(node: Any, uri: str) -> Any:
    """``node`` with its document-local ``$ref`` values made absolute (``uri#...``)."""
    if isinstance(node, list):
        return [_absolute_refs(item, uri) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: uri + value
        if key == "$ref" and str(value).startswith("#")
        else _absolute_refs(value, uri)
        for key, value in node.items()
    }


def _conforms(schema: Spec, document: Any) -> bool:
    return bool(jsonschema.Draft4Validator(schema).is_valid(document))


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema's ``"null"`` type, everywhere."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _openapi_to_jsonschema(value) for key, value in node.items()}
    if converted.get("nullable") is True and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted


@dataclass
class SpecLog:
    """Where each checked answer is written down, when the tests ask for it."""

    path: Path | None

    def write(self, operation: str, status: int, violation: str) -> None:
        if self.path is None:
            return
        line = orjson.dumps({"operation": operation, "status": status, "violation": violation})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)


def spec_check_middleware() -> Middleware:
    """The checking middleware, for the folder ``VIPPS_EMULATOR_CHECK_SPECS`` names."""
    checker = SpecChecker(Path(os.environ[SPECS_ENV]))
    log_path = os.environ.get(LOG_ENV)
    log = SpecLog(Path(log_path) if log_path else None)

    @web.middleware
    async def check_against_specs(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        operation = checker.find(request.method, request.path)
        if operation is None or request.get(FAULTED_KEY) or not isinstance(response, web.Response):
            return response
        body = response.body if isinstance(response.body, bytes) else b""
        violation = checker.check(operation, response.status, response.content_type, body)
        log.write(operation.name, response.status, violation)
        if not violation:
            return response
        logger.error(
            VIOLATION, operation=operation.name, status=response.status, violation=violation
        )
        detail = f"The emulator's answer breaks the spec of {operation.name}: {violation}"
        return problem(request, 500, "Internal Server Error", detail)

    return check_against_specs
