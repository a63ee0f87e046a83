"""Property-based requests generated from the server's own /openapi.json: no input makes it answer 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def api_schema(server_url):
    return schemathesis.openapi.from_url(f"{server_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case, server_url):
    response = case.call(base_url=server_url, timeout=180)
    assert response.status_code < 500, (response.status_code, response.text[:500])
