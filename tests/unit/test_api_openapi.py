"""The OpenAPI document without any server: valid OpenAPI 3.1, built from the handlers'
types, and the traffic checker used by the API tests catches a drift."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from noetl.api.app import route_table
from tests.support.openapi_check import Exchange, violations


def document() -> dict[str, Any]:
    # Building the table touches no connection, so no client is needed.
    routes, _, spec = route_table(None, token="t", sql=False)  # type: ignore[arg-type]
    assert routes
    return spec.document


def test_the_document_is_valid_openapi() -> None:
    spec = document()
    validate(spec)
    schemas = spec["components"]["schemas"]
    assert schemas["ExecuteBody"]["additionalProperties"] is False
    assert set(schemas["ExecutionDocument"]["required"]) >= {"execution_id", "status", "steps"}
    get = spec["paths"]["/api/executions/{id}"]["get"]
    assert get["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/api/ready"]["get"]
    assert spec["paths"]["/api/playbooks"]["post"]["requestBody"]["content"].keys() >= {
        "application/json",
        "text/yaml",
    }


def test_the_checker_flags_what_departs_from_the_document() -> None:
    spec = document()

    def exchange(status: int, body: bytes, route: str = "/api/executions/{id}") -> Exchange:
        return Exchange("get", route, "", b"", status, "application/json", body)

    good = exchange(404, b'{"error": "no execution 1"}')
    wrong_shape = exchange(404, b'{"message": "no execution 1"}')
    undocumented = exchange(418, b"{}")
    unknown = exchange(200, b"{}", route="/api/nowhere")
    found = violations(spec, [good, wrong_shape, undocumented, unknown])
    assert len(found) == 3
    assert "'error' is a required property" in found[0]
    assert "status not documented" in found[1]
    assert "not in the document" in found[2]
