"""Property-based tests of the service against its own OpenAPI schema (schemathesis): no input gives a 5xx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from shangpin.service import ServiceSettings, create_app
from shangpin.storage.keys import KeyStore


def test_no_generated_request_gives_a_server_error(service_model: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with KeyStore(url) as store:
        _key, token = store.create("admin", name="schemathesis")
    headers = {"Authorization": f"Bearer {token}"}
    app = create_app(
        ServiceSettings(model_dir=service_model, db_url=url, rate_limit=0, salt_file=tmp_path / "salt")
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        no_server_error()
        tested.append(operation.label)
    assert "POST /v1/enrich" in tested and len(tested) >= 15
