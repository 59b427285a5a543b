"""Property-based fuzzing of live daemons (a hub, and an edge linked to it) from their own
OpenAPI description (schemathesis).

Every operation is driven with generated requests, valid and invalid, as an admin and as a
member of another project, against random ids and against real images in each state. Each
answer must be below 500 and agree with the description (a listed status, a listed media
type, a body of the described shape); afterwards the daemon must be alive, its log free of
unhandled errors, and /healthcheck fast. The budget is bounded (FUZZ_EXAMPLES per operation,
mode and identity), and the test prints how many requests it made and how many were 5xx."""

from __future__ import annotations

import collections
import json
import os
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from appliance.api.schemas import PATCH_MEDIA_TYPES
from tests.conftest import Daemon, write_toml

# Glance's JSON patch media types are JSON on the wire.
schemathesis.serializer.alias(list(PATCH_MEDIA_TYPES), "application/json")

# Per operation, generation mode and token: about 1,900 requests per daemon. A deeper or different
# run: FUZZ_EXAMPLES=200 FUZZ_SEED=7 pytest tests/api/test_fuzz.py -s
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ADMIN, MEMBER = "fuzz-admin-token", "fuzz-member-token"
SITE = "dcn0"


def rq(
    daemon: Daemon,
    method: str,
    path: str,
    token: str,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    req = urllib.request.Request(
        daemon.url + path,
        data=data,
        method=method,
        headers={"X-Auth-Token": token, "Content-Type": content_type, "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
        return json.loads(body) if body else None


def seed(daemon: Daemon, hub_image: str | None) -> list[str]:
    """Images in each state the routes treat differently, for both tokens' projects (and at an
    edge, an image of its hub)."""
    ids = [hub_image] if hub_image else []

    def create(token: str, **body: Any) -> str:
        image = rq(
            daemon,
            "POST",
            "/v2/images",
            token,
            json.dumps({"disk_format": "raw", "container_format": "bare", **body}).encode(),
        )
        ids.append(image["id"])
        return image["id"]

    def upload(token: str, image_id: str, data: bytes) -> None:
        rq(daemon, "PUT", "/v2/images/%s/file" % image_id, token, data, "application/octet-stream")

    create(ADMIN, name="queued")
    upload(ADMIN, create(ADMIN, name="active", visibility="public", tags=["a", "b"], os_distro="debian"), b"x" * 4096)
    deactivated = create(ADMIN, name="deactivated")
    upload(ADMIN, deactivated, b"y" * 1024)
    rq(daemon, "POST", "/v2/images/%s/actions/deactivate" % deactivated, ADMIN)
    upload(MEMBER, create(MEMBER, name="member's"), b"z" * 2048)
    create(MEMBER, name="member's queued", min_disk=1)
    return ids


def _config(path: Path, **sections: Any) -> Path:
    return write_toml(
        path,
        {
            "auth": {
                "tokens": [
                    {"token": ADMIN, "user": "root", "project": "admin", "roles": ["admin"]},
                    {"token": MEMBER, "user": "alice", "project": "p1", "roles": ["member"]},
                ]
            },
            "api": {"max_upload_bytes": 1 << 20, "max_json_bytes": 64 << 10},
            **sections,
        },
    )


@pytest.fixture(params=["hub", "edge"])
def fuzzed(
    request: pytest.FixtureRequest, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> tuple[Daemon, list[str]]:
    """A hub (every route, the sites API too, with a registered site), or an edge linked to it
    (hub lookups of unknown ids, the cache, pulls of a hub image)."""
    hub = daemon_factory("hub", _config(tmp_path / "hub.toml", site={"name": "fuzz-hub", "role": "hub"}))
    if request.param == "hub":
        rq(hub, "POST", "/v2/edge/sites", ADMIN, json.dumps({"name": SITE, "api_url": "http://127.0.0.1:9"}).encode())
        return hub, seed(hub, None)
    hub_image = rq(
        hub,
        "POST",
        "/v2/images",
        ADMIN,
        json.dumps(
            {"name": "from the hub", "disk_format": "raw", "container_format": "bare", "visibility": "public"}
        ).encode(),
    )["id"]
    rq(hub, "PUT", "/v2/images/%s/file" % hub_image, ADMIN, b"h" * 8192, "application/octet-stream")
    (tmp_path / "hub-token").write_text(ADMIN)
    edge = daemon_factory(
        "edge",
        _config(
            tmp_path / "edge.toml",
            site={"name": SITE},
            hub={"url": hub.url, "token_file": str(tmp_path / "hub-token"), "read_timeout": 5, "connect_timeout": 2},
            cache={"max_size": 64 << 20, "min_free_bytes": 0, "prefetch_interval": 3600},
        ),
    )
    return edge, seed(edge, hub_image)


def test_fuzz_live_daemon(fuzzed: tuple[Daemon, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    daemon, image_ids = fuzzed
    schema = schemathesis.openapi.from_url(daemon.url + "/openapi.json")
    session = requests.Session()
    sent: dict[str, float] = {"requests": 0, "5xx": 0, "call_s": 0.0}
    failures: list[str] = []
    statuses: collections.Counter[int] = collections.Counter()

    def run(strategy: st.SearchStrategy[Any], token: str) -> None:
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=FUZZ_SEED is None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=hypothesis.Verbosity.quiet,
        )
        @given(case=strategy)
        def probe(case: Any) -> None:
            t0 = time.perf_counter()
            # The member asks as python-glanceclient does (*/*: HTML errors on Glance's paths).
            accept = "application/json" if token == ADMIN else "*/*"
            response = case.call(
                base_url=daemon.url, session=session, timeout=30, headers={"X-Auth-Token": token, "Accept": accept}
            )
            sent["call_s"] += time.perf_counter() - t0
            sent["requests"] += 1
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                sent["5xx"] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # collect them all: one report, no shrinking
                failures.append(
                    "%s %s -> %d\n%s" % (case.method, case.formatted_path, response.status_code, str(exc)[:1500])
                )
                print(
                    "contradiction: %s %s -> %d: %s"
                    % (case.method, case.path, response.status_code, " / ".join(str(exc).splitlines()[:8])[:300])
                )

        try:
            (hypothesis.seed(int(FUZZ_SEED))(probe) if FUZZ_SEED is not None else probe)()
        except hypothesis.errors.Unsatisfiable:
            pass  # negative mode on an operation without inputs: nothing invalid to send

    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletes last, so the other operations meet the seeded images while they still exist.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    for operation in operations:
        # Random path parameters, and the real ones (which reach past the lookups).
        known = [{"image_id": i} for i in image_ids] if "{image_id}" in operation.path else [{}]
        if "{name}" in operation.path and operation.path.startswith("/v2/edge/sites"):
            known = [{**k, "name": SITE} for k in known]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies = [operation.as_strategy(generation_mode=mode)]
            if known != [{}]:
                strategies += [operation.as_strategy(generation_mode=mode, path_parameters=k) for k in known]
            for token in (ADMIN, MEMBER):
                run(st.one_of(strategies), token)
    elapsed = time.monotonic() - started

    with capsys.disabled():  # the figures belong in `make test`'s output
        print(
            "\nfuzzing %s: %d requests in %.0f s (%.0f s of them waiting for answers), %d answered 5xx, "
            "%d contradicted the description; statuses %s"
            % (
                daemon.state_dir.name,
                sent["requests"],
                elapsed,
                sent["call_s"],
                sent["5xx"],
                len(failures),
                ", ".join("%d: %d" % item for item in sorted(statuses.items())),
            )
        )
    assert sent["5xx"] == 0 and not failures, "\n\n".join(failures[:30])
    assert daemon.proc.poll() is None, "the daemon died"
    timings = []
    for _ in range(10):
        t0 = time.perf_counter()
        with urllib.request.urlopen(daemon.url + "/healthcheck", timeout=5) as resp:
            assert resp.status == 200
        timings.append(time.perf_counter() - t0)
    assert statistics.median(timings) < 0.1, timings
    log = daemon.log.read_text(errors="replace")
    assert "Error handling request" not in log and "Traceback" not in log, log[-5000:]
    assert sent["requests"] >= 50 * FUZZ_EXAMPLES
