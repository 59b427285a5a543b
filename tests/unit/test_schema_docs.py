"""Tests for appliance.api.schema_docs.

Besides structural checks, the documents are fed to python-glanceclient's
own machinery (``glanceclient.v2.schemas``, the warlock models its image,
member, task and metadef controllers build, and the CLI argument generator)
through a fake HTTP client, so the tests exercise the same code paths a real
``glance`` CLI run against the appliance would.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

# python-glanceclient is a declared test dependency (pyproject [test] extra):
# import it outright so a broken install fails loudly instead of skipping.
import warlock
from glanceclient.common import utils as glanceclient_utils
from glanceclient.v2 import image_members as gc_members
from glanceclient.v2 import images as gc_images
from glanceclient.v2 import metadefs as gc_metadefs
from glanceclient.v2 import schemas as gc_schemas
from glanceclient.v2 import tasks as gc_tasks
from jsonschema.validators import validator_for

from appliance.api import schema_docs as sd

DISK = ("raw", "qcow2", "iso")
CONTAINER = ("bare", "ovf")

IMAGE_ID = "1bea47ed-f6a9-463b-b423-14b9cca9ad27"
OWNER = "5ef70662f8b34079a6eddb8da9d75fe8"

READ_ONLY_IMAGE_PROPS = {
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "direct_url",
    "self",
    "file",
    "stores",
    "schema",
}
COMMON_IMAGE_PROPS = {
    "kernel_id",
    "ramdisk_id",
    "instance_uuid",
    "architecture",
    "os_distro",
    "os_version",
    "description",
    "cinder_encryption_key_id",
    "cinder_encryption_key_deletion_policy",
}
BASE_IMAGE_PROPS = {
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "os_hidden",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "owner",
    "size",
    "virtual_size",
    "container_format",
    "disk_format",
    "created_at",
    "updated_at",
    "tags",
    "direct_url",
    "min_ram",
    "min_disk",
    "self",
    "file",
    "stores",
    "schema",
    "locations",
}


def typical_image(**overrides: Any) -> dict[str, Any]:
    """An image as GET /v2/images/{id} returns it (queued, no data yet)."""
    image = {
        "id": IMAGE_ID,
        "name": "cirros-0.6.2",
        "status": "queued",
        "visibility": "shared",
        "protected": False,
        "os_hidden": False,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "owner": OWNER,
        "size": None,
        "virtual_size": None,
        "container_format": "bare",
        "disk_format": "qcow2",
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
        "tags": ["edge", "cirros"],
        "min_ram": 0,
        "min_disk": 0,
        "os_distro": "cirros",
        "hw_disk_bus": "virtio",
        "stores": "local",
        "self": f"/v2/images/{IMAGE_ID}",
        "file": f"/v2/images/{IMAGE_ID}/file",
        "schema": "/v2/schemas/image",
    }
    image.update(overrides)
    return image


# ---------------------------------------------------------------------------
# A stand-in for glanceclient's HTTP client
# ---------------------------------------------------------------------------


class FakeResponse:
    def __init__(self) -> None:
        self.headers = {"x-openstack-request-id": "req-schema-docs-test"}


def _wire(obj: Any) -> Any:
    """Round-trip through JSON text, as the real client/server would."""
    return json.loads(json.dumps(obj))


class FakeHTTP:
    """Serves /v2/schemas/* from schema_docs plus canned resources."""

    def __init__(
        self,
        disk_formats=DISK,
        container_formats=CONTAINER,
        resources: dict[str, Any] | None = None,
        on_post: Callable[[str, Any], Any] | None = None,
    ) -> None:
        self.docs = sd.all_schemas(disk_formats, container_formats)
        self.resources = resources or {}
        self.on_post = on_post or (lambda url, data: data)
        self.calls: list[tuple[str, str, dict, Any]] = []

    def get(self, url, headers=None, **kwargs):
        self.calls.append(("GET", url, headers or {}, None))
        if url.startswith("/v2/schemas/"):
            name = url[len("/v2/schemas/") :]
            if name not in self.docs:
                raise AssertionError(f"glanceclient asked for unknown schema {name!r}")
            return FakeResponse(), _wire(self.docs[name])
        return FakeResponse(), _wire(self.resources[url])

    def post(self, url, headers=None, data=None, **kwargs):
        sent = _wire(data) if data is not None else None
        self.calls.append(("POST", url, headers or {}, sent))
        return FakeResponse(), _wire(self.on_post(url, sent))

    def patch(self, url, headers=None, data=None, **kwargs):
        self.calls.append(("PATCH", url, headers or {}, json.loads(data)))
        return FakeResponse(), None

    def put(self, url, headers=None, data=None, **kwargs):
        sent = _wire(data) if data is not None else None
        self.calls.append(("PUT", url, headers or {}, sent))
        return FakeResponse(), sent


def schema_client(http: FakeHTTP):
    return gc_schemas.Controller(http)


def without_self(body: dict[str, Any]) -> dict[str, Any]:
    """glanceclient pops 'self' before building a model (it clashes with __init__)."""
    return {k: v for k, v in body.items() if k != "self"}


def image_model(disk_formats=DISK, container_formats=CONTAINER):
    """The warlock model class exactly as glanceclient's images.Controller builds it."""
    http = FakeHTTP(disk_formats, container_formats)
    return gc_images.Controller(http, schema_client(http)).model


# ---------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formats",
    [(DISK, CONTAINER), (sd.DEFAULT_DISK_FORMATS, sd.DEFAULT_CONTAINER_FORMATS), ((), ())],
)
def test_every_document_is_json_and_a_valid_schema(formats):
    docs = sd.all_schemas(*formats)
    assert set(docs) == set(sd.SCHEMA_NAMES)
    assert len(sd.SCHEMA_NAMES) == 16
    for name, doc in docs.items():
        assert json.loads(json.dumps(doc)) == doc, name
        assert isinstance(doc["name"], str) and doc["name"], name
        assert isinstance(doc["properties"], dict) and doc["properties"], name
        # It must itself be a well-formed JSON Schema (warlock/jsonschema pick
        # the validator the same way).
        validator_for(doc).check_schema(doc)


def test_metadef_schemas_are_the_metadef_part_of_all_schemas():
    metadefs = sd.metadef_schemas()
    assert set(metadefs) == set(sd.METADEF_SCHEMA_NAMES)
    assert all(name.startswith("metadefs/") for name in metadefs)
    everything = sd.all_schemas(DISK, CONTAINER)
    for name, doc in metadefs.items():
        assert everything[name] == doc


def test_document_names():
    docs = sd.all_schemas(DISK, CONTAINER)
    expected = {
        "image": "image",
        "images": "images",
        "member": "member",
        "members": "members",
        "task": "task",
        "tasks": "tasks",
        "metadefs/namespace": "namespace",
        "metadefs/namespaces": "namespaces",
        "metadefs/resource_type": "resource_type_association",
        "metadefs/resource_types": "resource_type_associations",
        "metadefs/object": "object",
        "metadefs/objects": "objects",
        "metadefs/property": "property",
        "metadefs/properties": "properties",
        "metadefs/tag": "tag",
        "metadefs/tags": "tags",
    }
    assert {k: v["name"] for k, v in docs.items()} == expected


def test_image_schema_shape():
    schema = sd.image_schema(DISK, CONTAINER)
    props = schema["properties"]
    assert set(props) == BASE_IMAGE_PROPS | COMMON_IMAGE_PROPS
    assert schema["additionalProperties"] == {"type": "string"}
    assert schema["links"] == [
        {"rel": "self", "href": "{self}"},
        {"rel": "enclosure", "href": "{file}"},
        {"rel": "describedby", "href": "{schema}"},
    ]
    assert {k for k, v in props.items() if v.get("readOnly")} == READ_ONLY_IMAGE_PROPS
    assert {k for k, v in props.items() if v.get("is_base", True) is False} == COMMON_IMAGE_PROPS
    assert props["status"]["enum"] == [
        "queued",
        "saving",
        "active",
        "killed",
        "deleted",
        "uploading",
        "importing",
        "pending_delete",
        "deactivated",
    ]
    assert sorted(props["visibility"]["enum"]) == ["community", "private", "public", "shared"]
    for nullable in (
        "name",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "owner",
        "kernel_id",
        "ramdisk_id",
        "container_format",
        "disk_format",
    ):
        assert props[nullable]["type"] == ["null", "string"], nullable
    assert props["size"]["type"] == ["null", "integer"]
    assert props["virtual_size"]["type"] == ["null", "integer"]
    assert props["stores"] == {**props["stores"], "type": "string", "readOnly": True}
    assert props["tags"]["items"] == {"type": "string", "maxLength": 255}
    assert props["locations"]["items"]["required"] == ["url", "metadata"]
    assert props["cinder_encryption_key_deletion_policy"]["enum"] == [
        "on_image_deletion",
        "do_not_delete",
    ]
    assert props["checksum"]["maxLength"] == 32
    assert props["os_hash_algo"]["maxLength"] == 64
    assert props["os_hash_value"]["maxLength"] == 128


def test_collections():
    images = sd.images_schema(DISK, CONTAINER)
    assert images["properties"]["images"] == {
        "type": "array",
        "items": sd.image_schema(DISK, CONTAINER),
    }
    assert {"first", "next", "schema"} <= set(images["properties"])
    assert [link["rel"] for link in images["links"]] == ["first", "next", "describedby"]

    members = sd.members_schema()
    assert members["properties"]["members"]["items"] == sd.member_schema()
    assert set(members["properties"]) == {"members", "schema"}
    assert members["links"] == [{"rel": "describedby", "href": "{schema}"}]
    assert "additionalProperties" not in sd.member_schema()

    tasks = sd.tasks_schema()
    item_props = tasks["properties"]["tasks"]["items"]["properties"]
    assert set(sd.task_schema()["properties"]) - set(item_props) == {"input", "result", "message"}
    assert tasks["links"] == [{"rel": "describedby", "href": "{schema}"}]

    metadefs = sd.metadef_schemas()
    for single, plural, key in [
        ("namespace", "namespaces", "namespaces"),
        ("resource_type", "resource_types", "resource_type_associations"),
        ("object", "objects", "objects"),
        ("tag", "tags", "tags"),
    ]:
        item = dict(metadefs[f"metadefs/{single}"])
        collection = metadefs[f"metadefs/{plural}"]
        # Collections hoist the item's definitions to the top level.
        if "definitions" in item:
            assert collection["definitions"] == item.pop("definitions")
        assert collection["properties"][key] == {"type": "array", "items": item}
        assert item["additionalProperties"] is False
    props = metadefs["metadefs/properties"]
    assert props["properties"]["properties"]["type"] == "object"
    assert props["properties"]["properties"]["additionalProperties"]["required"] == ["type", "title"]
    assert metadefs["metadefs/property"]["required"] == ["type", "title", "name"]


def test_every_call_returns_fresh_objects():
    first = sd.all_schemas(DISK, CONTAINER)
    pristine = copy.deepcopy(first)
    # Vandalise everything reachable from the first result ...
    first["image"]["properties"]["disk_format"]["enum"].append("vandalised")
    first["image"]["properties"].clear()
    first["images"]["properties"]["images"]["items"]["links"].clear()
    first["metadefs/namespace"]["definitions"]["property"].clear()
    first["task"]["properties"]["status"]["enum"].clear()
    # ... later calls are unaffected.
    assert sd.all_schemas(DISK, CONTAINER) == pristine
    assert sd.image_schema(DISK, CONTAINER) == pristine["image"]
    assert sd.task_schema() == pristine["task"]
    assert sd.metadef_schemas()["metadefs/namespace"] == pristine["metadefs/namespace"]

    # No sub-object is shared between two documents of one call either.
    docs = sd.all_schemas(DISK, CONTAINER)
    seen: dict[int, str] = {}

    def walk(node, where):
        if isinstance(node, (dict, list)):
            assert id(node) not in seen, f"{where} shares an object with {seen[id(node)]}"
            seen[id(node)] = where
            for key, child in node.items() if isinstance(node, dict) else enumerate(node):
                walk(child, f"{where}/{key}")

    for name, doc in docs.items():
        walk(doc, name)


# ---------------------------------------------------------------------------
# Format enums
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "disk, container, disk_enum, container_enum",
    [
        (("raw", "qcow2"), ("bare",), [None, "raw", "qcow2"], [None, "bare"]),
        (["qcow2", "raw", "qcow2"], ["bare", None], [None, "qcow2", "raw"], [None, "bare"]),
        ((), (), [None], [None]),
        (
            sd.DEFAULT_DISK_FORMATS,
            sd.DEFAULT_CONTAINER_FORMATS,
            [None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"],
            [None, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"],
        ),
    ],
)
def test_format_enums_follow_configuration(disk, container, disk_enum, container_enum):
    for schema in (
        sd.image_schema(disk, container),
        sd.images_schema(disk, container)["properties"]["images"]["items"],
        sd.all_schemas(disk, container)["image"],
    ):
        assert schema["properties"]["disk_format"]["enum"] == disk_enum
        assert schema["properties"]["container_format"]["enum"] == container_enum
        assert None in schema["properties"]["disk_format"]["enum"]


def test_formats_must_be_sequences_of_names():
    with pytest.raises(TypeError):
        sd.image_schema("raw", CONTAINER)
    with pytest.raises(TypeError):
        sd.image_schema(DISK, ["bare", 3])
    with pytest.raises(TypeError):
        sd.schema_json("image", "raw", CONTAINER)


def test_model_only_accepts_enabled_formats():
    Image = image_model(disk_formats=("raw",), container_formats=("bare",))
    image = Image(**without_self(typical_image(disk_format="raw")))
    image.disk_format = None  # unset is allowed: the enum includes null
    with pytest.raises(warlock.InvalidOperation):
        image.disk_format = "qcow2"
    with pytest.raises(warlock.InvalidOperation):
        image.container_format = "ovf"
    with pytest.raises(ValueError):
        Image(**without_self(typical_image(disk_format="qcow2")))


# ---------------------------------------------------------------------------
# Cached JSON text
# ---------------------------------------------------------------------------


def test_schema_json():
    for name in sd.SCHEMA_NAMES:
        text = sd.schema_json(name, DISK, CONTAINER)
        assert json.loads(text) == sd.all_schemas(DISK, CONTAINER)[name]
        assert sd.schema_json(name, list(DISK), list(CONTAINER)) is text  # cached
    assert sd.schema_json("/image/", DISK, CONTAINER) == sd.schema_json("image", DISK, CONTAINER)
    assert json.loads(sd.schema_json("image"))["properties"]["disk_format"]["enum"] == [
        None,
        *sd.DEFAULT_DISK_FORMATS,
    ]
    assert sd.schema_json("nope") is None
    assert sd.schema_json("metadefs/nope") is None
    assert sd.schema_json("") is None


# ---------------------------------------------------------------------------
# python-glanceclient: schema download + Schema helper
# ---------------------------------------------------------------------------


def test_glanceclient_fetches_every_schema_it_uses():
    http = FakeHTTP()
    client = schema_client(http)
    # Names glanceclient itself asks for (images, image_tags, image_members,
    # tasks, metadefs controllers, the shell's schema cache and `explain`).
    for name in (
        "image",
        "member",
        "task",
        "metadefs/namespace",
        "metadefs/resource_type",
        "metadefs/property",
        "metadefs/object",
        "metadefs/tag",
        *sd.SCHEMA_NAMES,
    ):
        schema = client.get(name)
        assert schema.name == http.docs[name]["name"]
        assert {p.name for p in schema.properties} == set(http.docs[name]["properties"])
        assert schema.raw() == http.docs[name]
    assert http.calls[0][1] == "/v2/schemas/image"


def test_glanceclient_core_vs_base_properties():
    schema = schema_client(FakeHTTP()).get("image")
    for prop in BASE_IMAGE_PROPS:
        assert schema.is_base_property(prop) and schema.is_core_property(prop), prop
    for prop in COMMON_IMAGE_PROPS:
        assert schema.is_core_property(prop), prop
        assert not schema.is_base_property(prop), prop
    assert not schema.is_core_property("hw_disk_bus")
    described = {p.name: p.description for p in schema.properties}
    assert all(described[name] for name in BASE_IMAGE_PROPS | COMMON_IMAGE_PROPS)


def test_glanceclient_cli_arguments_skip_read_only_properties():
    """glanceclient turns the schema into `glance image-create` options."""
    raw = schema_client(FakeHTTP()).get("image").raw()

    def do_image_create():  # pragma: no cover - never called
        pass

    glanceclient_utils.schema_args(lambda: raw, omit=["locations", "os_hidden"])(do_image_create)
    options = {args[0]: kwargs for args, kwargs in do_image_create.arguments}
    expected = {
        "--" + name.replace("_", "-")
        for name, prop in raw["properties"].items()
        if not prop.get("readOnly") and name not in ("locations", "os_hidden")
    }
    assert set(options) == expected
    for read_only in READ_ONLY_IMAGE_PROPS:
        assert "--" + read_only.replace("_", "-") not in options
    assert "Valid values: None, raw, qcow2, iso" in options["--disk-format"]["help"]
    assert options["--min-ram"]["type"] is int
    assert options["--protected"]["metavar"] == "[True|False]"
    assert options["--tags"]["nargs"] == "+"


# ---------------------------------------------------------------------------
# python-glanceclient: the warlock image model
# ---------------------------------------------------------------------------


def test_model_accepts_typical_image_json():
    Image = image_model()
    image = Image(**without_self(typical_image()))
    assert image.checksum is None
    assert image.tags == ["edge", "cirros"]
    assert image.hw_disk_bus == "virtio"
    # An active image with data and a location.
    Image(
        **without_self(
            typical_image(
                status="active",
                size=16338944,
                virtual_size=117440512,
                checksum="c8fc807773e5354afe61636071771906",
                os_hash_algo="sha512",
                os_hash_value="a" * 128,
                locations=[{"url": "file:///var/lib/edge/images/x", "metadata": {}}],
                direct_url="file:///var/lib/edge/images/x",
                kernel_id=None,
                description="Cirros test image",
            )
        )
    )


def test_model_rejects_non_string_custom_properties():
    image = image_model()(**without_self(typical_image()))
    for bad in (5, 1.5, True, None, ["a"], {"a": "b"}):
        with pytest.raises(warlock.InvalidOperation):
            image.hw_custom = bad
    image.hw_custom = "fine"
    assert image.hw_custom == "fine"
    with pytest.raises(ValueError):
        image_model()(**without_self(typical_image(hw_numa_nodes=2)))


def test_model_rejects_bad_values_for_read_only_attributes():
    image = image_model()(**without_self(typical_image()))
    with pytest.raises(warlock.InvalidOperation):
        image.status = "bogus"
    with pytest.raises(warlock.InvalidOperation):
        image.size = "big"
    with pytest.raises(warlock.InvalidOperation):
        image.checksum = "0" * 33
    with pytest.raises(warlock.InvalidOperation):
        image.created_at = None
    with pytest.raises(warlock.InvalidOperation):
        image.stores = ["local"]
    with pytest.raises(warlock.InvalidOperation):
        image.visibility = "everyone"
    with pytest.raises(warlock.InvalidOperation):
        image.id = "not-a-uuid"
    with pytest.raises(warlock.InvalidOperation):
        image.tags = ["x" * 256]


def test_read_only_is_advisory_in_the_client():
    """Neither warlock nor jsonschema enforces readOnly.

    glanceclient keeps read-only attributes away from the user by not
    offering CLI options for them (see the schema_args test above); a
    well-typed value set programmatically passes client-side validation, so
    the server has to reject it (Glance answers 403 "Attribute ... is
    read-only").  This test pins that behaviour down so nobody relies on the
    schema alone.
    """
    image = image_model()(**without_self(typical_image()))
    image.status = "active"
    assert {"op": "replace", "path": "/status", "value": "active"} in json.loads(image.patch)


def test_model_generates_json_patch():
    image = image_model()(**without_self(typical_image()))
    image.name = "cirros-renamed"
    image.min_ram = 512
    image.hw_disk_bus = "scsi"
    image.description = "now with a description"
    del image.os_distro
    patch = json.loads(image.patch)
    ops = {(op["op"], op["path"]): op.get("value") for op in patch}
    assert ops == {
        ("replace", "/name"): "cirros-renamed",
        ("replace", "/min_ram"): 512,
        ("replace", "/hw_disk_bus"): "scsi",
        # description is a common (is_base: false) property -> "add"
        ("add", "/description"): "now with a description",
        ("remove", "/os_distro"): None,
        # SchemaBasedModel always re-sends tags as a whole
        ("replace", "/tags"): ["edge", "cirros"],
    }


# ---------------------------------------------------------------------------
# python-glanceclient: whole controller calls over the fake HTTP client
# ---------------------------------------------------------------------------


def test_images_create_validates_and_posts():
    def server(url, body):
        assert url == "/v2/images"
        return typical_image(**body)

    http = FakeHTTP(on_post=server)
    images = gc_images.Controller(http, schema_client(http))
    image = images.create(
        name="cirros",
        disk_format="qcow2",
        container_format="bare",
        visibility="private",
        tags=["a", "b"],
        min_disk=1,
        os_distro="cirros",
        hw_disk_bus="virtio",
    )
    posts = [c for c in http.calls if c[0] == "POST"]
    assert posts[0][3] == {
        "name": "cirros",
        "disk_format": "qcow2",
        "container_format": "bare",
        "visibility": "private",
        "tags": ["a", "b"],
        "min_disk": 1,
        "os_distro": "cirros",
        "hw_disk_bus": "virtio",
    }
    assert image.id == IMAGE_ID and image.status == "queued"
    assert image.request_ids == ["req-schema-docs-test"]

    for bad in (
        {"hw_numa_nodes": 2},
        {"disk_format": "vmdk"},
        {"container_format": "docker"},
        {"visibility": "everyone"},
        {"min_ram": "lots"},
        {"protected": "yes"},
        {"tags": "a,b"},
        {"cinder_encryption_key_deletion_policy": "sometimes"},
        {"kernel_id": "not-a-uuid"},
    ):
        with pytest.raises(TypeError):
            images.create(**bad)
    assert len([c for c in http.calls if c[0] == "POST"]) == 1  # nothing else was sent


def test_images_update_sends_the_patch_glance_expects():
    original = typical_image()
    del original["os_hidden"]  # a base property the server did not return
    http = FakeHTTP(resources={f"/v2/images/{IMAGE_ID}": original})
    images = gc_images.Controller(http, schema_client(http))
    images.update(
        IMAGE_ID,
        remove_props=["hw_disk_bus", "not_there"],
        name="renamed",
        os_hidden=True,
        description="d",
        hw_video_model="vga",
    )
    (patch_call,) = [c for c in http.calls if c[0] == "PATCH"]
    _, url, headers, patch = patch_call
    assert url == f"/v2/images/{IMAGE_ID}"
    assert headers["Content-Type"] == "application/openstack-images-v2.1-json-patch"
    ops = sorted((op["op"], op["path"], json.dumps(op.get("value"))) for op in patch)
    assert ops == sorted(
        [
            ("replace", "/name", '"renamed"'),
            ("replace", "/os_hidden", "true"),  # base property -> replace
            ("add", "/description", '"d"'),  # common property -> add
            ("add", "/hw_video_model", '"vga"'),  # custom property -> add
            ("remove", "/hw_disk_bus", "null"),
            ("replace", "/tags", '["edge", "cirros"]'),
        ]
    )

    with pytest.raises(TypeError):
        images.update(IMAGE_ID, hw_numa_nodes=2)


def test_members_tasks_and_metadefs_models():
    member = {
        "member_id": OWNER,
        "image_id": IMAGE_ID,
        "status": "pending",
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
        "schema": "/v2/schemas/member",
    }
    task = {
        "id": "8b6e4f5a-3c1d-4f2e-9a7b-0c1d2e3f4a5b",
        "type": "api_image_import",
        "status": "processing",
        "input": {"image_id": IMAGE_ID},
        "result": None,
        "owner": OWNER,
        "message": "",
        "image_id": IMAGE_ID,
        "request_id": "req-1",
        "user_id": "u1",
        "expires_at": None,
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
        "self": "/v2/tasks/8b6e4f5a-3c1d-4f2e-9a7b-0c1d2e3f4a5b",
        "schema": "/v2/schemas/task",
    }
    stamps = {"created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z"}

    def server(url, body):
        body = dict(body or {})
        if url.endswith("/tags/edge"):
            body["name"] = "edge"
        if url.endswith("/properties"):
            return body  # metadef properties carry no timestamps
        return {**body, **stamps}

    http = FakeHTTP(
        resources={
            f"/v2/images/{IMAGE_ID}/members/{OWNER}": member,
            f"/v2/tasks/{task['id']}": task,
        },
        on_post=server,
    )
    schemas = schema_client(http)

    members = gc_members.Controller(http, schemas)
    assert members.get(IMAGE_ID, OWNER).status == "pending"
    with pytest.raises(ValueError):
        members.model(**{**member, "status": "maybe"})

    tasks = gc_tasks.Controller(http, schemas)
    assert tasks.get(task["id"]).type == "api_image_import"
    with pytest.raises(ValueError):
        tasks.model(**without_self({**task, "status": "done"}))

    namespaces = gc_metadefs.NamespaceController(http, schemas)
    ns = namespaces.create(
        namespace="EDGE::Test",
        display_name="Edge test",
        visibility="public",
        protected=False,
        properties={"hw_foo": {"title": "Foo", "type": "string", "enum": ["a", "b"]}},
        resource_type_associations=[{"name": "OS::Glance::Image", "prefix": "hw_"}],
    )
    assert ns.namespace == "EDGE::Test"
    with pytest.raises(TypeError):
        namespaces.create(namespace="EDGE::Bad", visibility="community")
    with pytest.raises(TypeError):
        namespaces.create(namespace="EDGE::Bad", unknown_field="x")
    with pytest.raises(TypeError):  # property definitions need title + type
        namespaces.create(namespace="EDGE::Bad", properties={"p": {"type": "string"}})

    resource_types = gc_metadefs.ResourceTypeController(http, schemas)
    assert resource_types.associate("EDGE::Test", name="OS::Glance::Image", prefix="hw_").prefix == "hw_"
    with pytest.raises(TypeError):
        resource_types.associate("EDGE::Test", prefix="hw_")  # name is required

    properties = gc_metadefs.PropertyController(http, schemas)
    prop = properties.create("EDGE::Test", name="hw_foo", title="Foo", type="string", enum=["a", "b"], default="a")
    assert prop.title == "Foo"
    with pytest.raises(TypeError):
        properties.create("EDGE::Test", name="hw_foo", title="Foo", type="decimal")

    objects = gc_metadefs.ObjectController(http, schemas)
    obj = objects.create(
        "EDGE::Test",
        name="CPU",
        description="cpu knobs",
        required=["hw_foo"],
        properties={"hw_foo": {"title": "Foo", "type": "integer", "minimum": 0}},
    )
    assert obj.name == "CPU"
    with pytest.raises(TypeError):
        objects.create("EDGE::Test", description="no name")

    tags = gc_metadefs.TagController(http, schemas)
    assert tags.create("EDGE::Test", "edge").name == "edge"
