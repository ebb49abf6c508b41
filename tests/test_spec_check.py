"""The emulator's own answers checked against tests/specs (`proxy.emulator.speccheck`):
an answer that breaks its operation's spec becomes a loud 500 and a logged violation."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from proxy.emulator.speccheck import LOG_ENV, SpecChecker, spec_check_middleware

from .spec_answers import SPECS, summary

DETAILS = "/ecomm/v2/payments/order-1/details"


@pytest.fixture(scope="module")
def checker() -> SpecChecker:
    return SpecChecker(SPECS)


async def test_an_answer_that_breaks_its_spec_becomes_a_logged_500(
    aiohttp_client: AiohttpClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler answering eCom details with a number for ``orderId``."""
    log = tmp_path / "answers.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))

    async def wrong(request: web.Request) -> web.Response:
        return web.json_response({"orderId": 5})

    app = web.Application(middlewares=[spec_check_middleware()])
    app.router.add_get(DETAILS, wrong)
    client = await aiohttp_client(app)
    response = await client.get(DETAILS)
    assert response.status == 500
    assert "getPaymentDetailsUsingGET" in (await response.json())["detail"]
    found = summary(log)
    assert found.checked == {"getPaymentDetailsUsingGET": 1}
    assert len(found.violations) == 1
    assert "orderId" in found.violations[0]


def test_a_conforming_answer_passes(checker: SpecChecker) -> None:
    operation = checker.find("GET", DETAILS)
    assert operation is not None
    body = orjson.dumps({"orderId": "order-1", "transactionLogHistory": []})
    assert checker.check(operation, 200, "application/json", body) == ""


def test_an_answer_in_a_media_type_the_spec_does_not_give_is_a_violation(
    checker: SpecChecker,
) -> None:
    operation = checker.find("GET", DETAILS)
    assert operation is not None
    body = orjson.dumps({"orderId": "order-1"})
    assert "text/plain" in checker.check(operation, 200, "text/plain", body)


def test_a_success_status_the_spec_does_not_list_is_a_violation(checker: SpecChecker) -> None:
    operation = checker.find("GET", "/epayment/v1/payments/ref-12345678")
    assert operation is not None
    assert "not documented" in checker.check(operation, 202, "application/json", b"{}")


def test_the_suite_checks_emulator_answers_in_subprocesses_too() -> None:
    """The variables are set for the whole session, so emulator processes inherit them."""
    assert os.environ["VIPPS_EMULATOR_CHECK_SPECS"] == str(SPECS)
    assert os.environ[LOG_ENV]
