"""JSON schema documents served under ``/v2/schemas/...``.

Glance v2 publishes JSON schemas that clients download and act upon.
python-glanceclient in particular:

* builds a warlock model from ``/v2/schemas/image`` and validates every
  ``image-create`` / ``image-update`` argument against it client-side
  (``additionalProperties: {"type": "string"}`` is what forces custom
  properties to be strings; ``enum`` lists restrict formats / visibility);
* uses ``is_base`` to tell base attributes from the well-known optional
  ("common") properties, which changes the JSON-patch ops it emits
  (``replace`` vs ``add``);
* turns every non-``readOnly`` property into a CLI option;
* builds warlock models from ``member``, ``task`` and the ``metadefs/*``
  item schemas as well.

So the documents below reproduce the shapes that current Glance (API v2.16+)
serves, property for property.  Which Glance object each document comes
from, and whether it is served in its "raw" or "minimal" form, matters:

* ``image`` / ``images`` and every ``metadefs/*`` document are served raw:
  item schemas carry ``additionalProperties`` (``{"type": "string"}`` for
  the image, ``false`` elsewhere); collections carry ``first`` / ``next`` /
  ``schema`` properties and links, and hoist the item's ``definitions`` to
  the top level.
* ``member`` / ``members`` / ``task`` / ``tasks`` are served minimal: no
  ``additionalProperties`` and collections only link ``describedby``.

Everything here is plain data built per call: each public function returns
a brand-new object graph that the caller may mutate or serialize freely.
:func:`schema_json` additionally offers cached, ready-to-send JSON text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "DEFAULT_CONTAINER_FORMATS",
    "DEFAULT_DISK_FORMATS",
    "METADEF_SCHEMA_NAMES",
    "SCHEMA_NAMES",
    "all_schemas",
    "image_schema",
    "images_schema",
    "member_schema",
    "members_schema",
    "metadef_schemas",
    "schema_json",
    "task_schema",
    "tasks_schema",
]

#: Glance's default ``[image_format] disk_formats``.
DEFAULT_DISK_FORMATS: tuple[str, ...] = (
    "ami",
    "ari",
    "aki",
    "vhd",
    "vhdx",
    "vmdk",
    "raw",
    "qcow2",
    "vdi",
    "iso",
    "ploop",
)
#: Glance's default ``[image_format] container_formats``.
DEFAULT_CONTAINER_FORMATS: tuple[str, ...] = (
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
)

#: Path suffixes (after ``/v2/schemas/``) of the metadef documents.
METADEF_SCHEMA_NAMES: tuple[str, ...] = (
    "metadefs/namespace",
    "metadefs/namespaces",
    "metadefs/resource_type",
    "metadefs/resource_types",
    "metadefs/object",
    "metadefs/objects",
    "metadefs/property",
    "metadefs/properties",
    "metadefs/tag",
    "metadefs/tags",
)
#: Every path suffix served under ``/v2/schemas/``.
SCHEMA_NAMES: tuple[str, ...] = ("image", "images", "member", "members", "task", "tasks", *METADEF_SCHEMA_NAMES)

_UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
_PROPERTY_KEYS_DOC = "https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html"
_JSON_TYPES_OR_NULL = ["array", "boolean", "integer", "number", "object", "string", None]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _format_enum(formats: Iterable[str] | None, what: str) -> list[str | None]:
    """``[None] + formats`` (order kept, duplicates dropped), as Glance does."""
    if formats is None:
        formats = ()
    if isinstance(formats, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of format names, not a string")
    enum: list[str | None] = [None]
    for fmt in formats:
        if fmt is None:
            continue
        if not isinstance(fmt, str) or not fmt:
            raise TypeError(f"{what} entries must be non-empty strings, got {fmt!r}")
        if fmt not in enum:
            enum.append(fmt)
    return enum


def _collection_raw(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """A raw (list-valued) collection document; hoists the item's definitions."""
    definitions = item.pop("definitions", None)
    doc: dict[str, Any] = {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }
    if definitions:
        doc["definitions"] = definitions
    return doc


def _collection_minimal(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """A minimal collection document (members / tasks)."""
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "describedby", "href": "{schema}"}],
    }


def _nullable(type_name: str) -> list[str]:
    return ["null", type_name]


def _read_only(type_: Any, description: str | None = None, **extra: Any) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": type_, "readOnly": True}
    if description is not None:
        prop["description"] = description
    prop.update(extra)
    return prop


def _timestamp(description: str) -> dict[str, Any]:
    """Metadef-style read-only date-time property."""
    return {
        "type": "string",
        "readOnly": True,
        "description": description,
        "format": "date-time",
    }


# --------------------------------------------------------------------------
# image
# --------------------------------------------------------------------------


def _image_base_properties(disk_enum: list[str | None], container_enum: list[str | None]) -> dict[str, Any]:
    return {
        "id": {
            "type": "string",
            "description": "An identifier for the image",
            "pattern": _UUID_PATTERN,
        },
        "name": {
            "type": _nullable("string"),
            "description": "Descriptive name for the image",
            "maxLength": 255,
        },
        "status": _read_only(
            "string",
            "Status of the image",
            enum=[
                "queued",
                "saving",
                "active",
                "killed",
                "deleted",
                "uploading",
                "importing",
                "pending_delete",
                "deactivated",
            ],
        ),
        "visibility": {
            "type": "string",
            "description": "Scope of image accessibility",
            "enum": ["community", "public", "private", "shared"],
        },
        "protected": {
            "type": "boolean",
            "description": "If true, image will not be deletable.",
        },
        "os_hidden": {
            "type": "boolean",
            "description": "If true, image will not appear in default image list response.",
        },
        "checksum": _read_only(_nullable("string"), "md5 hash of image contents.", maxLength=32),
        "os_hash_algo": _read_only(_nullable("string"), "Algorithm to calculate the os_hash_value", maxLength=64),
        "os_hash_value": _read_only(
            _nullable("string"),
            "Hexdigest of the image contents using the algorithm specified by the os_hash_algo",
            maxLength=128,
        ),
        "owner": {
            "type": _nullable("string"),
            "description": "Owner of the image",
            "maxLength": 255,
        },
        "size": _read_only(_nullable("integer"), "Size of image file in bytes"),
        "virtual_size": _read_only(_nullable("integer"), "Virtual size of image in bytes"),
        "container_format": {
            "type": _nullable("string"),
            "description": "Format of the container",
            "enum": container_enum,
        },
        "disk_format": {
            "type": _nullable("string"),
            "description": "Format of the disk",
            "enum": disk_enum,
        },
        "created_at": _read_only("string", "Date and time of image registration"),
        "updated_at": _read_only("string", "Date and time of the last image modification"),
        "tags": {
            "type": "array",
            "description": "List of strings related to the image",
            "items": {"type": "string", "maxLength": 255},
        },
        "direct_url": _read_only("string", "URL to access the image file kept in external store"),
        "min_ram": {
            "type": "integer",
            "description": "Amount of ram (in MB) required to boot image.",
        },
        "min_disk": {
            "type": "integer",
            "description": "Amount of disk space (in GB) required to boot image.",
        },
        "self": _read_only("string", "An image self url"),
        "file": _read_only("string", "An image file url"),
        "stores": _read_only(
            "string",
            "Store in which image data resides.  Only present when the operator "
            "has enabled multiple stores.  May be a comma-separated list of store "
            "identifiers.",
        ),
        "schema": _read_only("string", "An image schema url"),
        "locations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "maxLength": 255},
                    "metadata": {"type": "object"},
                    "validation_data": {
                        "description": (
                            "Values to be used to populate the corresponding image "
                            "properties. If the image status is not 'queued', values "
                            "must exactly match those already contained in the image "
                            "properties."
                        ),
                        "type": "object",
                        "writeOnly": True,
                        "additionalProperties": False,
                        "properties": {
                            "checksum": {"type": "string", "minLength": 32, "maxLength": 32},
                            "os_hash_algo": {"type": "string", "maxLength": 64},
                            "os_hash_value": {"type": "string", "maxLength": 128},
                        },
                        "required": ["os_hash_algo", "os_hash_value"],
                    },
                },
                "required": ["url", "metadata"],
            },
            "description": "A set of URLs to access the image file kept in external store",
        },
    }


def _image_common_properties() -> dict[str, Any]:
    """The well-known optional properties (Glance's default schema-image.json).

    Glance marks every one of them ``"is_base": false`` when merging them
    into the image schema; glanceclient relies on that flag.
    """
    props: dict[str, Any] = {
        "kernel_id": {
            "type": _nullable("string"),
            "pattern": _UUID_PATTERN,
            "description": (
                "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image."
            ),
        },
        "ramdisk_id": {
            "type": _nullable("string"),
            "pattern": _UUID_PATTERN,
            "description": (
                "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image."
            ),
        },
        "instance_uuid": {
            "type": "string",
            "description": (
                "Metadata which can be used to record which instance this image is "
                "associated with. (Informational only, does not create an instance "
                "snapshot.)"
            ),
        },
        "architecture": {
            "description": f"Operating system architecture as specified in {_PROPERTY_KEYS_DOC}",
            "type": "string",
        },
        "os_distro": {
            "description": (f"Common name of operating system distribution as specified in {_PROPERTY_KEYS_DOC}"),
            "type": "string",
        },
        "os_version": {
            "description": "Operating system version as specified by the distributor.",
            "type": "string",
        },
        "description": {
            "description": "A human-readable string describing this image.",
            "type": "string",
        },
        "cinder_encryption_key_id": {
            "description": (
                "Identifier in the OpenStack Key Management Service for the "
                "encryption key for the Block Storage Service to use when mounting "
                "a volume created from this image"
            ),
            "type": "string",
        },
        "cinder_encryption_key_deletion_policy": {
            "description": (
                "States the condition under which the Image Service will delete the "
                "object associated with the 'cinder_encryption_key_id' image "
                "property.  If this property is missing, the Image Service will "
                "take no action"
            ),
            "type": "string",
            "enum": ["on_image_deletion", "do_not_delete"],
        },
    }
    for prop in props.values():
        prop["is_base"] = False
    return props


def image_schema(disk_formats: Sequence[str], container_formats: Sequence[str]) -> dict[str, Any]:
    """``GET /v2/schemas/image``.

    ``disk_format`` / ``container_format`` enums are ``[None]`` followed by
    the enabled formats, in the order given (duplicates dropped).
    """
    properties = _image_base_properties(
        _format_enum(disk_formats, "disk_formats"),
        _format_enum(container_formats, "container_formats"),
    )
    properties.update(_image_common_properties())
    return {
        "name": "image",
        "properties": properties,
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def images_schema(disk_formats: Sequence[str], container_formats: Sequence[str]) -> dict[str, Any]:
    """``GET /v2/schemas/images``: raw collection of :func:`image_schema`."""
    return _collection_raw("images", image_schema(disk_formats, container_formats))


# --------------------------------------------------------------------------
# members
# --------------------------------------------------------------------------


def member_schema() -> dict[str, Any]:
    """``GET /v2/schemas/member`` (minimal form: no additionalProperties)."""
    return {
        "name": "member",
        "properties": {
            "member_id": {
                "type": "string",
                "description": "An identifier for the image member (tenantId)",
            },
            "image_id": {
                "type": "string",
                "description": "An identifier for the image",
                "pattern": _UUID_PATTERN,
            },
            "created_at": {
                "type": "string",
                "description": "Date and time of image member creation",
            },
            "updated_at": {
                "type": "string",
                "description": "Date and time of last modification of image member",
            },
            "status": {
                "type": "string",
                "description": "The status of this image member",
                "enum": ["pending", "accepted", "rejected"],
            },
            "schema": {"readOnly": True, "type": "string"},
        },
    }


def members_schema() -> dict[str, Any]:
    """``GET /v2/schemas/members`` (minimal collection)."""
    return _collection_minimal("members", member_schema())


# --------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------


def _task_properties() -> dict[str, Any]:
    return {
        "id": {
            "description": "An identifier for the task",
            "pattern": _UUID_PATTERN,
            "type": "string",
        },
        "type": {
            "description": "The type of task represented by this content",
            "enum": ["import", "api_image_import"],
            "type": "string",
        },
        "status": {
            "description": "The current status of this task",
            "enum": ["pending", "processing", "success", "failure"],
            "type": "string",
        },
        "input": {
            "description": "The parameters required by task, JSON blob",
            "type": _nullable("object"),
        },
        "result": {
            "description": "The result of current task, JSON blob",
            "type": _nullable("object"),
        },
        "owner": {
            "description": "An identifier for the owner of this task",
            "type": "string",
        },
        "message": {
            "description": ("Human-readable informative message only included when appropriate (usually on failure)"),
            "type": "string",
        },
        "image_id": {
            "description": "Image associated with the task",
            "type": "string",
        },
        "request_id": {
            "description": "Human-readable informative request-id",
            "type": "string",
        },
        "user_id": {
            "description": "User associated with the task",
            "type": "string",
        },
        "expires_at": {
            "description": "Datetime when this resource would be subject to removal",
            "type": _nullable("string"),
        },
        "created_at": {
            "description": "Datetime when this resource was created",
            "type": "string",
        },
        "updated_at": {
            "description": "Datetime when this resource was updated",
            "type": "string",
        },
        "self": {"readOnly": True, "type": "string"},
        "schema": {"readOnly": True, "type": "string"},
    }


def task_schema() -> dict[str, Any]:
    """``GET /v2/schemas/task`` (minimal form)."""
    return {"name": "task", "properties": _task_properties()}


def tasks_schema() -> dict[str, Any]:
    """``GET /v2/schemas/tasks``: list view hides input, result and message."""
    properties = _task_properties()
    for hidden in ("input", "result", "message"):
        del properties[hidden]
    return _collection_minimal("tasks", {"name": "task", "properties": properties})


# --------------------------------------------------------------------------
# metadata definitions
# --------------------------------------------------------------------------


def _metadef_definitions() -> dict[str, Any]:
    """``definitions`` shared by the namespace and object schemas."""
    return {
        "positiveInteger": {"type": "integer", "minimum": 0},
        "positiveIntegerDefault0": {"allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]},
        "stringArray": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
        },
        "property": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["title", "type"],
                "properties": _metadef_property_body(),
            },
        },
    }


def _metadef_property_body() -> dict[str, Any]:
    """The JSON-schema-like description of one metadef property."""
    return {
        "name": {"type": "string", "maxLength": 255},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "operators": {"type": "array", "items": {"type": "string"}},
        "type": {"type": "string", "enum": list(_JSON_TYPES_OR_NULL)},
        "required": {"$ref": "#/definitions/stringArray"},
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
        "maxLength": {"$ref": "#/definitions/positiveInteger"},
        "minLength": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "pattern": {"type": "string", "format": "regex"},
        "enum": {"type": "array"},
        "readonly": {"type": "boolean"},
        "default": {},
        "items": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": list(_JSON_TYPES_OR_NULL)},
                "enum": {"type": "array"},
            },
        },
        "maxItems": {"$ref": "#/definitions/positiveInteger"},
        "minItems": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "uniqueItems": {"type": "boolean", "default": False},
        "additionalItems": {"type": "boolean"},
    }


def _metadef_namespace() -> dict[str, Any]:
    return {
        "name": "namespace",
        "properties": {
            "namespace": {
                "type": "string",
                "description": "The unique namespace text.",
                "maxLength": 80,
            },
            "display_name": {
                "type": "string",
                "description": "The user friendly name for the namespace. Used by UI if available.",
                "maxLength": 80,
            },
            "description": {
                "type": "string",
                "description": "Provides a user friendly description of the namespace.",
                "maxLength": 500,
            },
            "visibility": {
                "type": "string",
                "description": "Scope of namespace accessibility.",
                "enum": ["public", "private"],
            },
            "protected": {
                "type": "boolean",
                "description": "If true, namespace will not be deletable.",
            },
            "owner": {
                "type": "string",
                "description": "Owner of the namespace.",
                "maxLength": 255,
            },
            "created_at": _timestamp("Date and time of namespace creation"),
            "updated_at": _timestamp("Date and time of the last namespace modification"),
            "schema": {"readOnly": True, "type": "string"},
            "self": {"readOnly": True, "type": "string"},
            "resource_type_associations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "prefix": {"type": "string"},
                        "properties_target": {"type": "string"},
                    },
                },
            },
            "properties": {"$ref": "#/definitions/property"},
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "required": {"$ref": "#/definitions/stringArray"},
                        "properties": {"$ref": "#/definitions/property"},
                    },
                },
            },
            "tags": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                },
            },
        },
        "additionalProperties": False,
        "definitions": _metadef_definitions(),
        "required": ["namespace"],
    }


def _metadef_resource_type_association() -> dict[str, Any]:
    return {
        "name": "resource_type_association",
        "properties": {
            "name": {
                "type": "string",
                "description": (
                    "Resource type names should be aligned with Heat resource types "
                    "whenever possible: "
                    "https://docs.openstack.org/heat/latest/template_guide/openstack.html"
                ),
                "maxLength": 80,
            },
            "prefix": {
                "type": "string",
                "description": (
                    "Specifies the prefix to use for the given resource type. Any "
                    "properties in the namespace should be prefixed with this prefix "
                    "when being applied to the specified resource type. Must include "
                    "prefix separator (e.g. a colon :)."
                ),
                "maxLength": 80,
            },
            "properties_target": {
                "type": "string",
                "description": (
                    "Some resource types allow more than one key / value pair per "
                    "instance.  For example, Cinder allows user and image metadata on "
                    "volumes. Only the image properties metadata is evaluated by Nova "
                    "(scheduling or drivers). This property allows a namespace target "
                    "to remove the ambiguity."
                ),
                "maxLength": 80,
            },
            "created_at": _timestamp("Date and time of resource type association"),
            "updated_at": _timestamp("Date and time of the last resource type association modification"),
        },
        "additionalProperties": False,
        "required": ["name"],
    }


def _metadef_object() -> dict[str, Any]:
    return {
        "name": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 255},
            "description": {"type": "string"},
            "required": {"$ref": "#/definitions/stringArray"},
            "properties": {"$ref": "#/definitions/property"},
            "schema": {"readOnly": True, "type": "string"},
            "self": {"readOnly": True, "type": "string"},
            "created_at": _timestamp("Date and time of object creation"),
            "updated_at": _timestamp("Date and time of the last object modification"),
        },
        "additionalProperties": False,
        "definitions": _metadef_definitions(),
        "required": ["name"],
    }


def _metadef_property(*, require_name: bool) -> dict[str, Any]:
    return {
        "name": "property",
        "properties": _metadef_property_body(),
        "additionalProperties": False,
        "definitions": {
            "positiveInteger": {"type": "integer", "minimum": 0},
            "positiveIntegerDefault0": {"allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]},
            "stringArray": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "uniqueItems": True,
            },
        },
        # Inside the properties collection the name is the map key instead.
        "required": ["type", "title", "name"] if require_name else ["type", "title"],
    }


def _metadef_properties_collection() -> dict[str, Any]:
    """Properties are listed as a name-keyed map, not an array."""
    item = _metadef_property(require_name=False)
    definitions = item.pop("definitions")
    return {
        "name": "properties",
        "properties": {
            "properties": {"type": "object", "additionalProperties": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
        "definitions": definitions,
    }


def _metadef_tag() -> dict[str, Any]:
    return {
        "name": "tag",
        "properties": {
            "name": {"type": "string", "maxLength": 255},
            "created_at": _timestamp("Date and time of tag creation"),
            "updated_at": _timestamp("Date and time of the last tag modification"),
        },
        "additionalProperties": False,
        "required": ["name"],
    }


def metadef_schemas() -> dict[str, dict[str, Any]]:
    """Every ``/v2/schemas/metadefs/...`` document, keyed by path suffix."""
    return {
        "metadefs/namespace": _metadef_namespace(),
        "metadefs/namespaces": _collection_raw("namespaces", _metadef_namespace()),
        "metadefs/resource_type": _metadef_resource_type_association(),
        "metadefs/resource_types": _collection_raw("resource_type_associations", _metadef_resource_type_association()),
        "metadefs/object": _metadef_object(),
        "metadefs/objects": _collection_raw("objects", _metadef_object()),
        "metadefs/property": _metadef_property(require_name=True),
        "metadefs/properties": _metadef_properties_collection(),
        "metadefs/tag": _metadef_tag(),
        "metadefs/tags": _collection_raw("tags", _metadef_tag()),
    }


# --------------------------------------------------------------------------
# everything
# --------------------------------------------------------------------------


def all_schemas(disk_formats: Sequence[str], container_formats: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every document served under ``/v2/schemas/``, keyed by path suffix."""
    docs: dict[str, dict[str, Any]] = {
        "image": image_schema(disk_formats, container_formats),
        "images": images_schema(disk_formats, container_formats),
        "member": member_schema(),
        "members": members_schema(),
        "task": task_schema(),
        "tasks": tasks_schema(),
    }
    docs.update(metadef_schemas())
    return docs


@functools.lru_cache(maxsize=64)
def _cached_json(name: str, disk_formats: tuple[str, ...], container_formats: tuple[str, ...]) -> str:
    if name == "image":
        doc = image_schema(disk_formats, container_formats)
    elif name == "images":
        doc = images_schema(disk_formats, container_formats)
    else:
        doc = all_schemas(disk_formats, container_formats)[name]
    return json.dumps(doc)


def schema_json(
    name: str,
    disk_formats: Sequence[str] = DEFAULT_DISK_FORMATS,
    container_formats: Sequence[str] = DEFAULT_CONTAINER_FORMATS,
) -> str | None:
    """Cached JSON text of the document at ``/v2/schemas/<name>``.

    ``name`` is the path suffix (``"image"``, ``"metadefs/tags"``, ...); a
    trailing slash is ignored.  Returns ``None`` for an unknown name so the
    caller can answer 404.
    """
    name = name.strip("/")
    if name not in SCHEMA_NAMES:
        return None
    if isinstance(disk_formats, (str, bytes)) or isinstance(container_formats, (str, bytes)):
        raise TypeError("formats must be sequences of format names, not strings")
    return _cached_json(name, tuple(disk_formats), tuple(container_formats))
