"""Schemathesis drives the published ePayment spec through the proxy to the emulator.

The emulator and the proxy run as real processes on loopback (``python -m proxy
emulator`` and ``python -m proxy --config``), and schemathesis sends what the spec
allows, with whatever ``Authorization``, ``Ocp-Apim-Subscription-Key`` and
``Merchant-Serial-Number`` it makes up: the proxy must put its own in their place. No
answer may be a 5xx, none may be refused for credentials, and every answer the spec
describes must have the spec's shape and content type.

The spec is Vipps' published file, copied to ``tests/specs/epayment.local.yml`` (see
``tests/specs/README.md``). The test loads it as published, less the errata in
`ERRATA`, and adds the OpenAPI links that let the stateful test follow a payment from
its creation.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import hypothesis
import orjson
import pytest
import schemathesis
from schemathesis import BaseSchema
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.generation.case import Case
from schemathesis.openapi.loaders import detect_content_type, load_content

from proxy.emulator.speccheck import (
    erratum_epayment_adjust_content_type,
    erratum_epayment_event_name,
)

from .conftest import free_port
from .processes import ProxyProcess, write_config

SPEC = Path(__file__).parent / "specs" / "epayment.local.yml"
MAX_EXAMPLES = 15
STATEFUL_EXAMPLES = 8
STATEFUL_STEPS = 8
START_SECONDS = 20.0


def credentials_accepted(ctx: Any, response: schemathesis.Response, case: Case[Any]) -> None:
    """The proxy's own credentials went out: Vipps never refused them (401/403)."""
    del ctx
    assert response.status_code not in (401, 403), (
        f"{case.method} {case.formatted_path} was refused for credentials: "
        f"{response.status_code} {response.text[:300]}"
    )


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    credentials_accepted,
]


ERRATA = (erratum_epayment_adjust_content_type, erratum_epayment_event_name)

REFERENCE_FROM_BODY = {"reference": "$response.body#/reference"}
FOLLOW_UPS = (
    "getPayment",
    "getPaymentEventLog",
    "forceApprove",
    "capturePayment",
    "cancelPayment",
    "refundPayment",
)


def add_payment_links(spec: dict[str, Any]) -> None:
    """OpenAPI links from each answer that names a payment to the calls on that payment."""
    links = {op: {"operationId": op, "parameters": REFERENCE_FROM_BODY} for op in FOLLOW_UPS}
    responses = spec["components"]["responses"]
    for name in ("CreatePaymentResponse", "GetPaymentResponse", "AdjustResponse"):
        responses[name]["links"] = copy.deepcopy(links)


def load_spec() -> dict[str, Any]:
    """The published spec, errata applied, payment links added."""
    spec = load_content(SPEC.read_text("utf-8"), detect_content_type(path=str(SPEC)))
    for erratum in ERRATA:
        erratum(spec)
    add_payment_links(spec)
    return spec


def load_schema(mode: str, **config: Any) -> BaseSchema:
    """The spec as schemathesis sees it, generating ``mode`` data."""
    generation = {"mode": mode, "max-examples": MAX_EXAMPLES, "deterministic": True}
    loaded = schemathesis.openapi.from_dict(
        load_spec(), config=schemathesis.Config.from_dict({"generation": generation, **config})
    )
    loaded.location = SPEC.absolute().as_uri()  # resolves the Receipt $ref beside it
    return loaded


# Examples and fuzzing only: the coverage phase builds its boundary cases when pytest
# collects, about 10 s here for the reference operations and most of a minute for
# createPayment's large body, which would take the file past its budget.
schema = load_schema(
    "positive", phases={"coverage": {"enabled": False}, "stateful": {"max-steps": STATEFUL_STEPS}}
)
negative_schema = load_schema("negative", phases={"coverage": {"enabled": False}})


# Real HTTP through two processes on a 2-core machine that also runs other tests: a
# slow example is no failure, and a deadline would make the run flaky.
SETTINGS = hypothesis.settings(
    deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)

OperationTest = Callable[["Case[Any]", "Services"], None]


def each_operation(loaded: BaseSchema) -> Callable[[OperationTest], OperationTest]:
    """``loaded.parametrize()``, typed: one test per operation of the spec."""
    return cast(Callable[[OperationTest], OperationTest], loaded.parametrize())


class Emulator:
    """``python -m proxy emulator`` in its own process, on loopback."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self._log: IO[bytes] = log.open("wb")
        self.log_path = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "emulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The admin app's counters; raises OSError while it is not serving."""
        admin = f"http://127.0.0.1:{self.admin_port}/stats"
        with urllib.request.urlopen(admin, timeout=2) as response:
            stats: dict[str, Any] = orjson.loads(response.read())
            return stats

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            try:
                self.stats()
            except OSError:
                time.sleep(0.1)
            else:
                return
        raise AssertionError("the emulator never served:\n" + self.log_path.read_text())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Services:
    emulator: Emulator
    proxy: ProxyProcess

    @property
    def proxy_url(self) -> str:
        return self.proxy.url("")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The emulator and the proxy in front of it, each in its own process."""
    folder = tmp_path_factory.mktemp("schemathesis")
    emulator = Emulator(folder / "emulator.log")
    try:
        emulator.wait_serving()
        port = free_port()
        config = write_config(
            folder / "proxy.toml", f"{emulator.url}/accesstoken/get", emulator.url, port
        )
        proxy = ProxyProcess(config, port, folder / "proxy.log")
        try:
            schema.config.update(base_url=proxy.url(""))
            yield Services(emulator, proxy)
        finally:
            proxy.terminate()
            proxy.close()
    finally:
        emulator.close()


@each_operation(schema)
@SETTINGS
def test_each_operation_answers_in_the_specs_shape(case: Case[Any], services: Services) -> None:
    """Any call the spec allows: no 5xx, no credential refusal, the documented shape."""
    case.call_and_validate(base_url=services.proxy_url, checks=CHECKS)


@each_operation(negative_schema)
@SETTINGS
def test_calls_the_spec_forbids_get_no_server_error(case: Case[Any], services: Services) -> None:
    """Any call the spec does not allow: answered, by the proxy or Vipps, never with a 5xx."""
    case.call_and_validate(base_url=services.proxy_url, checks=[not_a_server_error])


def test_payment_lifecycles_answer_in_the_specs_shape(services: Services) -> None:
    """Create, then get, approve, capture, cancel and refund it: every step in shape."""
    before = services.emulator.stats()["payments"]

    class PaymentLifecycles(schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(
            self,
            response: schemathesis.Response,
            case: Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(response, checks=CHECKS)

    PaymentLifecycles.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize=True,
            suppress_health_check=[hypothesis.HealthCheck.too_slow],
        )
    )
    assert services.emulator.stats()["payments"] > before  # the links were followed


def test_a_reference_with_a_newline_gets_a_documented_answer(services: Services) -> None:
    """A reference holding a newline, once schemathesis's find, is answered as a problem."""
    operation = schema["/epayment/v1/payments/{reference}/cancel"]["POST"]
    case = operation.Case(
        path_parameters={"reference": "Ó\n"}, headers={"Idempotency-Key": "newline-case"}
    )
    response = case.call(base_url=services.proxy_url)

    case.validate_response(response, checks=[not_a_server_error, content_type_conformance])
    assert response.status_code == 404
    assert response.headers.get("x-request-id"), response.headers
