"""The OpenAPI description covers exactly the routes the app serves, and the daemon serves it
without a token."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis

from appliance.api.middleware import STATUS
from appliance.api.openapi import document
from appliance.app import build_app
from appliance.services import Services
from tests.conftest import Daemon

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def served(services: Services) -> set[tuple[str, str]]:
    app = build_app(services)
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource is not None}


def test_every_route_is_described_and_every_description_is_a_route(services: Services) -> None:
    formats = services.config.formats
    doc = document(formats.disk_formats, formats.container_formats)
    routes = served(services)
    assert routes, "the router lists no routes"
    assert routes - described(doc) == set(), "routes missing from appliance/api/openapi.py"
    assert described(doc) - routes == set(), "described paths the app does not serve"


def test_every_operation_lists_its_errors_and_an_id(services: Services) -> None:
    formats = services.config.formats
    doc = document(formats.disk_formats, formats.container_formats)
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            ids.append(op["operationId"])
            codes = set(op["responses"])
            assert any(c.startswith("2") or c == "300" for c in codes), (method, path)
            assert "default" not in codes, "every status is listed, so the fuzzer can hold the daemon to them"
            if op.get("security") != []:
                assert {"401", "403"} <= codes, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= codes, (method, path)
            for name in (p["name"] for p in item.get("parameters", []) if p["in"] == "path"):
                assert "{%s}" % name in path
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_document_is_valid_openapi_3_1(services: Services) -> None:
    formats = services.config.formats
    doc = document(formats.disk_formats, formats.container_formats)
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 meta-schema
    doc["paths"]["/v2/images"]["get"]["responses"] = ["200"]
    with pytest.raises(Exception, match="responses"):
        schemathesis.openapi.from_dict(doc).validate()


def test_refs_resolve(services: Services) -> None:
    formats = services.config.formats
    doc = document(formats.disk_formats, formats.container_formats)
    text = json.dumps(doc)
    for kind in ("schemas", "responses"):
        for name in doc["components"][kind]:
            assert '"#/components/%s/%s"' % (kind, name) in text, "unused component %s" % name
    for ref in set(part.split('"')[0] for part in text.split('"$ref": "')[1:]):
        _, _, kind, name = ref.split("/")
        assert name in doc["components"][kind], ref


def test_daemon_serves_it_without_a_token(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    with urllib.request.urlopen(daemon.url + "/openapi.json", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        doc = json.loads(resp.read())
    assert doc["openapi"] == "3.1.0"
    assert ("GET", "/v2/images") in described(doc) and ("GET", "/openapi.json") in described(doc)
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []
    disk = doc["components"]["schemas"]["ImageCreate"]["properties"]["disk_format"]["enum"]
    assert "qcow2" in disk and "raw" in disk


def test_every_status_the_middleware_maps_is_described(services: Services) -> None:
    formats = services.config.formats
    doc = document(formats.disk_formats, formats.container_formats)
    described_errors = {int(name[1:]) for name in doc["components"]["responses"]}
    assert set(STATUS.values()) <= described_errors, (
        "add the new status to _ERRORS and to the operations that answer it"
    )
