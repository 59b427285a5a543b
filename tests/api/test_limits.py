"""Metadata limits (Glance's image_property_quota / image_tag_quota, name and value sizes, no
control characters), the large list that must not hold the event loop, and per-project quotas
with Glance's unified-limit names: each on a real daemon."""

from __future__ import annotations

import http.client
import http.server
import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from tests.conftest import Daemon, write_toml
from tests.integration.test_request_bodies import HealthProbe  # /healthcheck timed on its own thread

ADMIN = "limits-admin-token"
P1 = "limits-token-project-1"
P2 = "limits-token-project-2"
TOKENS = [
    {"token": ADMIN, "user": "root", "project": "admin", "roles": ["admin", "member", "reader"]},
    {"token": P1, "user": "one", "project": "p1", "roles": ["member", "reader"]},
    {"token": P2, "user": "two", "project": "p2", "roles": ["member", "reader"]},
]
PATCH_CT = "application/openstack-images-v2.1-json-patch"
MIB = 1 << 20


def call(
    daemon: Daemon,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str = ADMIN,
    content_type: str = "application/json",
    raw: bytes | None = None,
    chunked: bool = False,
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; errors are JSON (Accept)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"X-Auth-Token": token, "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = content_type
    if chunked and data is not None:
        payload: Any = iter([data[i : i + 65536] for i in range(0, len(data), 65536)])
        headers["Transfer-Encoding"] = "chunked"
    else:
        payload = data
    req = urllib.request.Request(daemon.url + path, data=payload, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read(), exc.code
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text.decode(errors="replace")


def create(daemon: Daemon, token: str = ADMIN, **body: Any) -> tuple[int, Any]:
    body.setdefault("disk_format", "raw")
    body.setdefault("container_format", "bare")
    return call(daemon, "POST", "/v2/images", body, token=token)


def created(daemon: Daemon, token: str = ADMIN, **body: Any) -> str:
    status, answer = create(daemon, token, **body)
    assert status == 201, answer
    return str(answer["id"])


def patch(daemon: Daemon, image_id: str, ops: list[dict[str, Any]], token: str = ADMIN) -> tuple[int, Any]:
    return call(daemon, "PATCH", "/v2/images/%s" % image_id, ops, token=token, content_type=PATCH_CT)


def put_data(
    daemon: Daemon, image_id: str, data: bytes, token: str = ADMIN, *, route: str = "file", chunked: bool = False
) -> tuple[int, Any]:
    return call(
        daemon,
        "PUT",
        "/v2/images/%s/%s" % (image_id, route),
        token=token,
        raw=data,
        content_type="application/octet-stream",
        chunked=chunked,
    )


@pytest.fixture
def limited(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Callable[..., Daemon]:
    def start(**sections: Any) -> Daemon:
        sections.setdefault("auth", {"tokens": TOKENS})
        sections.setdefault("api", {}).setdefault("unix_socket", "")
        return daemon_factory("site", write_toml(tmp_path / "limits.toml", sections))

    return start


# -- per-image limits ------------------------------------------------------------------------


def test_property_and_tag_quotas_answer_413_as_glance(limited: Callable[..., Daemon]) -> None:
    daemon = limited(limits={"image_property_quota": 4, "image_tag_quota": 3})
    status, answer = create(daemon, **{"k%d" % i: "v" for i in range(5)})
    assert status == 413
    assert answer["message"] == (
        "The limit has been exceeded on the number of allowed image properties. Attempted: 5, Maximum: 4"
    )
    image_id = created(daemon, **{"k%d" % i: "v" for i in range(4)})
    status, answer = patch(daemon, image_id, [{"op": "add", "path": "/k9", "value": "v"}])
    assert status == 413 and "Attempted: 5, Maximum: 4" in answer["message"]
    # Replacing or removing never counts (Glance counts only when a patch adds a property).
    assert patch(daemon, image_id, [{"op": "replace", "path": "/k0", "value": "w"}])[0] == 200
    assert (
        patch(daemon, image_id, [{"op": "remove", "path": "/k1"}, {"op": "add", "path": "/k9", "value": "v"}])[0] == 200
    )

    status, answer = create(daemon, tags=["a", "b", "c", "d"])
    assert status == 413
    assert answer["message"] == (
        "The limit has been exceeded on the number of allowed image tags. Attempted: 4, Maximum: 3"
    )
    tagged = created(daemon, tags=["a", "b", "c"])
    status, answer = call(daemon, "PUT", "/v2/images/%s/tags/d" % tagged)
    assert status == 413 and "Attempted: 4, Maximum: 3" in answer["message"]
    assert call(daemon, "PUT", "/v2/images/%s/tags/a" % tagged)[0] == 204  # already there: no change
    assert patch(daemon, tagged, [{"op": "replace", "path": "/tags", "value": list("abcd")}])[0] == 413
    assert call(daemon, "GET", "/v2/images/%s" % tagged)[1]["tags"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "case, body",
    [
        ("image name with ESC", {"name": "x\x1b[2J\x1b[31m"}),
        ("image name with NUL", {"name": "a\x00b"}),
        ("property name with NUL", {"a\x00b": "v"}),
        ("property name with a line break", {"a\nb": "v"}),
        ("property value with NUL", {"note": "a\x00b"}),
        ("property value with ESC", {"note": "\x1b]0;owned\x07"}),
        ("property value with a C1 control", {"note": "a\x9bb"}),
        ("tag with ESC", {"tags": ["ok", "\x1b[5m"]}),
        ("tag with a line break", {"tags": ["a\nb"]}),
        ("image name of 256 characters", {"name": "n" * 256}),
        ("property name of 256 characters", {"p" * 256: "v"}),
        ("tag of 256 characters", {"tags": ["t" * 256]}),
        ("property value over the cap", {"note": "v" * 1001}),
    ],
)
def test_bad_text_is_refused_with_400(limited: Callable[..., Daemon], case: str, body: dict[str, Any]) -> None:
    daemon = limited(limits={"max_property_value_length": 1000})
    status, answer = create(daemon, **body)
    assert status == 400, (case, answer)
    assert "control character" in answer["message"] or "characters long" in answer["message"], answer
    status, answer = call(daemon, "GET", "/v2/images")
    assert answer["images"] == []  # nothing was created


def test_text_rules_hold_on_patch_tags_and_unpaired_surrogates(limited: Callable[..., Daemon]) -> None:
    daemon = limited(limits={"max_property_value_length": 1000})
    image_id = created(daemon, name="plain", note="line one\nline two\ttabbed")  # tabs and line breaks are text
    assert call(daemon, "GET", "/v2/images/%s" % image_id)[1]["note"] == "line one\nline two\ttabbed"
    assert patch(daemon, image_id, [{"op": "add", "path": "/note2", "value": "v\x00"}])[0] == 400
    assert patch(daemon, image_id, [{"op": "replace", "path": "/name", "value": "\x1b[2J"}])[0] == 400
    assert patch(daemon, image_id, [{"op": "add", "path": "/big", "value": "v" * 1001}])[0] == 400
    assert patch(daemon, image_id, [{"op": "add", "path": "/fits", "value": "v" * 1000}])[0] == 200
    assert call(daemon, "PUT", "/v2/images/%s/tags/%%1B%%5B2J" % image_id)[0] == 400
    assert call(daemon, "PUT", "/v2/images/%s/tags/%%00" % image_id)[0] == 400
    # An unpaired surrogate is valid JSON but no text SQLite can store: a 400, not a 500.
    raw = b'{"name": "s", "disk_format": "raw", "container_format": "bare", "note": "\\ud800"}'
    status, answer = call(daemon, "POST", "/v2/images", raw=raw)
    assert status == 400 and "U+D800" in answer["message"]
    shown = call(daemon, "GET", "/v2/images/%s" % image_id)[1]
    assert shown["name"] == "plain" and "note2" not in shown and "big" not in shown
    assert call(daemon, "GET", "/healthcheck")[0] == 200


def test_injected_properties_count_against_the_property_quota(limited: Callable[..., Daemon]) -> None:
    daemon = limited(
        limits={"image_property_quota": 3},
        **{"import": {"plugins": ["inject_image_metadata"], "inject": {"site": "edge-1", "rack": "r7"}}},
    )
    image_id = created(daemon, P1, name="full", a="1", b="2")  # 2 of 3; injection would make 4
    assert put_data(daemon, image_id, b"x" * 4096, P1, route="stage")[0] == 204
    status, answer = call(
        daemon, "POST", "/v2/images/%s/import" % image_id, {"method": {"name": "glance-direct"}}, token=P1
    )
    assert status == 202, answer
    deadline = time.monotonic() + 30
    while True:
        tasks = call(daemon, "GET", "/v2/images/%s/tasks" % image_id, token=P1)[1]["tasks"]
        if (tasks and tasks[0]["status"] in ("success", "failure")) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert tasks[0]["status"] == "failure", tasks
    assert "Attempted: 4, Maximum: 3" in tasks[0]["message"]
    shown = call(daemon, "GET", "/v2/images/%s" % image_id, token=P1)[1]
    assert shown["status"] == "queued" and "site" not in shown
    room = created(daemon, P1, name="room", a="1")  # 1 + 2 injected = 3: fits
    assert put_data(daemon, room, b"x" * 4096, P1, route="stage")[0] == 204
    assert (
        call(daemon, "POST", "/v2/images/%s/import" % room, {"method": {"name": "glance-direct"}}, token=P1)[0] == 202
    )
    deadline = time.monotonic() + 30
    while call(daemon, "GET", "/v2/images/%s" % room, token=P1)[1]["status"] != "active":
        assert time.monotonic() < deadline, call(daemon, "GET", "/v2/images/%s/tasks" % room, token=P1)
        time.sleep(0.1)
    assert call(daemon, "GET", "/v2/images/%s" % room, token=P1)[1]["site"] == "edge-1"


def test_injected_properties_follow_the_same_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"import.inject: .*control characters"):
        parse_config({"import": {"inject": {"site": "edge\x1b[2J"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"import.inject: Property name"):
        parse_config({"import": {"inject": {"n" * 256: "v"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"limits.image_tag_quota"):
        parse_config({"limits": {"image_tag_quota": -2}}, tmp_path)


# -- the largest list the limits allow --------------------------------------------------------


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


PAGE = 64  # api.max_page_size in the test config
VALUE = 8192  # limits.max_property_value_length in the test config
PROPS = 128  # the default image_property_quota


def full_image(i: int) -> dict[str, Any]:
    return {"name": "heavy-%03d" % i, **{"p%03d" % k: chr(97 + (i + k) % 26) * VALUE for k in range(PROPS)}}


def test_healthcheck_stays_fast_during_the_largest_list(limited: Callable[..., Daemon]) -> None:
    daemon = limited(
        api={"max_page_size": PAGE, "max_json_bytes": 4 * MIB}, limits={"max_property_value_length": VALUE}
    )
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: created(daemon, **full_image(i)), range(PAGE)))
    status, _ = create(daemon, name="over", x="v" * (VALUE + 1))
    assert status == 400  # the page below is the largest the limits allow
    for _ in range(2):
        with HealthProbe(daemon.url) as probe:
            time.sleep(0.2)
            started = time.perf_counter()
            req = urllib.request.Request(
                daemon.url + "/v2/images?limit=%d" % (PAGE + 10), headers={"X-Auth-Token": ADMIN}
            )
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, body = resp.status, resp.read()  # parsed after the probe: it shares this process
            took = time.perf_counter() - started
            time.sleep(0.2)
        assert status == 200
        page = json.loads(body)
        assert sorted(i["id"] for i in page["images"]) == sorted(ids)
        heavy = {i["name"]: i for i in page["images"]}
        for i in (0, PAGE - 1):
            expected = full_image(i)
            assert all(heavy[expected["name"]][k] == v for k, v in expected.items())
        assert page["first"] == "/v2/images" and page["schema"] == "/v2/schemas/images" and "next" not in page
        assert len(probe.latencies) > 10, probe.latencies
        print(
            "list of %d images x %d properties x %d chars: %.2f s; /healthcheck p99 %.1f ms, max %.1f ms over %d probes"
            % (PAGE, PROPS, VALUE, took, p99(probe.latencies) * 1000, max(probe.latencies) * 1000, len(probe.latencies))
        )
        assert p99(probe.latencies) < 0.1, "healthcheck p99 %.3f s during the list" % p99(probe.latencies)
    # A client that goes away mid-list: the stream stops quietly, the daemon serves on.
    conn = http.client.HTTPConnection(daemon.url.split("//", 1)[1], timeout=30)
    conn.request("GET", "/v2/images?limit=%d" % PAGE, headers={"X-Auth-Token": ADMIN})
    resp = conn.getresponse()
    assert len(resp.read(2 * MIB)) == 2 * MIB
    conn.sock.close()
    conn.close()
    time.sleep(0.5)
    assert call(daemon, "GET", "/v2/images?limit=1")[0] == 200
    assert "Traceback" not in daemon.log.read_text()
    # Paging still works: the next link carries the marker.
    status, first = call(daemon, "GET", "/v2/images?limit=10")
    status, second = call(daemon, "GET", first["next"])
    assert len(first["images"]) == len(second["images"]) == 10
    assert not {i["id"] for i in first["images"]} & {i["id"] for i in second["images"]}


def test_healthcheck_stays_fast_while_image_rows_are_read(limited: Callable[..., Daemon]) -> None:
    """The operator's table of every image (GET /v2/edge/image-rows, up to 10,000 a page) is
    read on the database thread and encoded on a worker thread a chunk at a time: four readers
    of the whole table at once do not hold the event loop."""
    daemon = limited()
    count = 1500
    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(lambda i: created(daemon, name="%04d" % i + "n" * 251), range(count)))
    path = "/v2/edge/image-rows?limit=10000&sort_key=name&sort_dir=asc"

    def read_all(_: int) -> dict[str, Any]:
        req = urllib.request.Request(daemon.url + path, headers={"X-Auth-Token": ADMIN})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return dict(json.loads(resp.read()))

    with HealthProbe(daemon.url) as probe:
        time.sleep(0.2)
        with ThreadPoolExecutor(4) as pool:
            pages = list(pool.map(read_all, range(8)))
        time.sleep(0.2)
    for page in pages:
        assert "next" not in page and {r[0] for r in page["rows"]} == ids
        assert [r[1] for r in page["rows"]] == ["%04d" % i + "n" * 251 for i in range(count)]
    assert len(probe.latencies) > 10, probe.latencies
    print(
        "8 reads of %d image rows: /healthcheck p99 %.1f ms, max %.1f ms over %d probes"
        % (count, p99(probe.latencies) * 1000, max(probe.latencies) * 1000, len(probe.latencies))
    )
    assert p99(probe.latencies) < 0.1, "healthcheck p99 %.3f s during the image rows" % p99(probe.latencies)


# -- per-project quotas ------------------------------------------------------------------------

QUOTAS = {
    "image_count_total": 3,
    "image_size_total": 1,
    "image_count_uploading": 1,
    "image_stage_total": -1,
    "projects": {"p2": {"image_count_total": 4, "image_count_uploading": -1, "image_stage_total": 1}},
}


def over(resource: str, project: str, limit: int, usage: int, delta: int) -> str:
    return (
        "The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a quota "
        "threshold was breached.\n\nThe response body:\nProject %s is over a limit for [Resource %s is over limit "
        "of %d due to current usage %d and delta %d]" % (project, resource, limit, usage, delta)
    )


def data_files(daemon: Daemon) -> list[str]:
    store = daemon.state_dir / "images"
    return sorted(p.name for p in store.iterdir() if p.is_file()) + sorted(
        p.name for p in (store / ".partial").iterdir()
    )


def test_quotas_per_project_as_glance(limited: Callable[..., Daemon]) -> None:
    daemon = limited(quotas=QUOTAS)
    # image_count_total: 3 for p1 (the default), 4 for p2 (its own table)
    p1 = [created(daemon, P1, name="p1-%d" % i) for i in range(3)]
    status, answer = create(daemon, P1, name="one-too-many")
    assert status == 413 and answer["message"] == over("image_count_total", "p1", 3, 3, 1)
    p2 = [created(daemon, P2, name="p2-%d" % i) for i in range(4)]
    assert create(daemon, P2)[0] == 413

    # image_size_total (MiB): p1 may store 1 MiB
    assert put_data(daemon, p1[0], b"a" * 700_000, P1)[0] == 204
    status, answer = put_data(daemon, p1[1], b"b" * 700_000, P1)  # size known: refused before a byte is written
    assert status == 413 and answer["message"] == over("image_size_total", "p1", 1, 0, 1)
    status, answer = put_data(daemon, p1[1], b"b" * 700_000, P1, chunked=True)  # size unknown: stopped on the way
    assert status == 413 and "Resource image_size_total is over limit of 1" in answer["message"]
    assert data_files(daemon) == [p1[0]]  # nothing partial left
    assert call(daemon, "GET", "/v2/images/%s" % p1[1], token=P1)[1]["status"] == "queued"
    assert put_data(daemon, p1[1], b"c" * 300_000, P1)[0] == 204  # what fits still goes in
    # p2's default size limit is the same 1 MiB, counted on its own images only
    assert put_data(daemon, p2[0], b"d" * 900_000, P2)[0] == 204

    # image_stage_total (MiB): p2 may hold 1 MiB staged
    assert put_data(daemon, p2[1], b"e" * 700_000, P2, route="stage")[0] == 204
    status, answer = put_data(daemon, p2[2], b"f" * 700_000, P2, route="stage")
    assert status == 413 and answer["message"] == over("image_stage_total", "p2", 1, 0, 1)
    status, answer = put_data(daemon, p2[2], b"f" * 700_000, P2, route="stage", chunked=True)
    assert status == 413 and "Resource image_stage_total" in answer["message"]
    assert call(daemon, "GET", "/v2/images/%s" % p2[2], token=P2)[1]["status"] == "queued"
    assert sorted(p.name for p in (daemon.state_dir / "staging" / "staged").iterdir() if p.is_file()) == [p2[1]]

    # image_count_uploading: p1 may have one upload (or staged import) at a time
    assert put_data(daemon, p1[2], b"g" * 1000, P1, route="stage")[0] == 204  # p1[2] is now `uploading`
    call(daemon, "DELETE", "/v2/images/%s" % p1[1], token=P1)
    fresh = created(daemon, P1, name="fresh")
    status, answer = put_data(daemon, fresh, b"h" * 10, P1)
    assert status == 413 and answer["message"] == over("image_count_uploading", "p1", 1, 1, 1)
    # the staged image itself may go on to its import (it is the one upload)
    status, answer = call(
        daemon, "POST", "/v2/images/%s/import" % p1[2], {"method": {"name": "glance-direct"}}, token=P1
    )
    assert status == 202, answer


class _Source(http.server.BaseHTTPRequestHandler):
    body = b"w" * (3 * MIB)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_web_download_stops_at_the_stage_quota(limited: Callable[..., Daemon]) -> None:
    source = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    threading.Thread(target=source.serve_forever, daemon=True).start()
    try:
        port = source.server_address[1]
        daemon = limited(
            quotas=QUOTAS, **{"import": {"uri_filter": {"allowed_hosts": ["127.0.0.1"], "allowed_ports": [port]}}}
        )
        image_id = created(daemon, P2, name="downloaded")  # p2: image_stage_total = 1 MiB
        status, answer = call(
            daemon,
            "POST",
            "/v2/images/%s/import" % image_id,
            {"method": {"name": "web-download", "uri": "http://127.0.0.1:%d/big" % port}},
            token=P2,
        )
        assert status == 202, answer
        deadline = time.monotonic() + 30
        while (task := call(daemon, "GET", "/v2/images/%s/tasks" % image_id, token=P2)[1]["tasks"][0])[
            "status"
        ] == "processing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert task["status"] == "failure"
        assert "Project p2 is over a limit for [Resource image_stage_total is over limit of 1" in task["message"], task
        assert call(daemon, "GET", "/v2/images/%s" % image_id, token=P2)[1]["status"] == "queued"
        assert not [p for p in (daemon.state_dir / "staging").rglob("*") if p.is_file()]
    finally:
        source.shutdown()
        source.server_close()


def test_concurrent_creates_never_pass_the_count_quota(limited: Callable[..., Daemon]) -> None:
    daemon = limited(quotas={"image_count_total": 3})
    for round_ in range(3):  # the race, repeated
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda i: create(daemon, P1, name="race-%d" % i)[0], range(12)))
        assert sorted(statuses) == [201] * 3 + [413] * 9, (round_, statuses)
        mine = call(daemon, "GET", "/v2/images", token=P1)[1]["images"]
        assert len(mine) == 3
        for image in mine:
            assert call(daemon, "DELETE", "/v2/images/%s" % image["id"], token=P1)[0] == 204
    assert created(daemon, P2, name="other project")  # another project's count is its own


def test_concurrent_uploads_never_pass_the_size_quota(limited: Callable[..., Daemon]) -> None:
    daemon = limited(quotas={"image_size_total": 2})
    ids = [created(daemon, P1, name="u-%d" % i) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:  # unknown sizes: each stopped as the total crosses 2 MiB
        statuses = list(pool.map(lambda i: put_data(daemon, i, b"z" * 900_000, P1, chunked=True)[0], ids))
    # Which uploads win depends on how their bytes interleave; that the total never passes does not.
    assert 1 <= statuses.count(204) <= 2 and statuses.count(204) + statuses.count(413) == 6, statuses
    stored = sum(i["size"] or 0 for i in call(daemon, "GET", "/v2/images", token=P1)[1]["images"])
    assert stored <= 2 * MIB
