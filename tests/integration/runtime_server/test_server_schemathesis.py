"""Requests generated from the server's own OpenAPI document, valid and invalid, never get a 5xx."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from tests.integration.runtime_server.harness import RuntimeServer

pytestmark = pytest.mark.integration

# schemathesis' own pytest integration (`from_fixture`) does not run under pytest 9 yet: drive hypothesis here.


@pytest.fixture(scope="module")
def fuzzed_server(checkpoint):
    # Generated chat requests rarely set an output limit: keep the default short so the run stays quick.
    with RuntimeServer(checkpoint, "--default-max-tokens", "4") as running:
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_no_server_error(fuzzed_server, mode):
    server = fuzzed_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def exercise(case):
        case.call_and_validate(checks=[not_a_server_error], timeout=60)

    exercise()
    assert httpx.get(f"{server.url}/ready").status_code == 200
