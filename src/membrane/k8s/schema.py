"""The Kubernetes v1 schema subset the lab validates, as data, and the checker that walks it.

Every field of ObjectMeta, PodSpec, Container, ContainerPort and NamespaceSpec is listed so that a
valid object is accepted as it is; fields the lab ignores are checked for their JSON type only
(object, list, string, ...), never for their contents. A field not listed is an unknown field,
like the API server's strict field validation.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from membrane.errors import InputError


class T(Enum):
    """JSON types of the Kubernetes OpenAPI schema (plus the few YAML needs)."""

    STR = "a string"
    INT = "an integer"
    INT_OR_STR = "an integer or a string"
    BOOL = "a boolean"
    OBJ = "an object"
    LIST = "a list"
    STR_MAP = "a map of strings"
    TIME = "a timestamp"


@dataclass(frozen=True, slots=True)
class F:
    """One field: its type, whether it is required, and the schema of its object or list items."""

    type: T
    required: bool = False
    child: Schema | None = None
    """For OBJ: the object's fields. For LIST: each item is an object with these fields."""
    items: T | None = None
    """For LIST without *child*: the type of each item."""


Schema = Mapping[str, F]


def _ignored(objs: str = "", lists: str = "", strs: str = "", ints: str = "", bools: str = "",
             str_maps: str = "", str_lists: str = "") -> dict[str, F]:
    """Fields accepted and ignored, grouped by type (names separated by spaces)."""
    out: dict[str, F] = {}
    for names, field in (
        (objs, F(T.OBJ)), (lists, F(T.LIST)), (strs, F(T.STR)), (ints, F(T.INT)),
        (bools, F(T.BOOL)), (str_maps, F(T.STR_MAP)), (str_lists, F(T.LIST, items=T.STR)),
    ):
        for name in names.split():
            out[name] = field
    return out


OBJECT_META: Schema = {
    "name": F(T.STR),
    "namespace": F(T.STR),
    "labels": F(T.STR_MAP),
    "annotations": F(T.STR_MAP),
    "creationTimestamp": F(T.TIME),
    "deletionTimestamp": F(T.TIME),
    **_ignored(
        lists="managedFields ownerReferences",
        strs="generateName resourceVersion selfLink uid",
        ints="deletionGracePeriodSeconds generation",
        str_lists="finalizers",
    ),
}

CONTAINER_PORT: Schema = {
    "containerPort": F(T.INT, required=True),
    "name": F(T.STR),
    "protocol": F(T.STR),
    "hostPort": F(T.INT),
    "hostIP": F(T.STR),
}

CONTAINER: Schema = {
    "name": F(T.STR, required=True),
    "ports": F(T.LIST, child=CONTAINER_PORT),
    **_ignored(
        objs="lifecycle livenessProbe readinessProbe resources securityContext startupProbe",
        lists="env envFrom resizePolicy restartPolicyRules volumeDevices volumeMounts",
        strs="image imagePullPolicy restartPolicy terminationMessagePath "
        "terminationMessagePolicy workingDir",
        bools="stdin stdinOnce tty",
        str_lists="args command",
    ),
}

POD_SPEC: Schema = {
    "containers": F(T.LIST, required=True, child=CONTAINER),
    "initContainers": F(T.LIST, child=CONTAINER),
    **_ignored(
        objs="affinity dnsConfig os resources securityContext",
        lists="ephemeralContainers hostAliases imagePullSecrets readinessGates resourceClaims "
        "schedulingGates tolerations topologySpreadConstraints volumes",
        strs="dnsPolicy hostname hostnameOverride nodeName preemptionPolicy priorityClassName "
        "restartPolicy runtimeClassName schedulerName serviceAccount serviceAccountName "
        "subdomain",
        ints="activeDeadlineSeconds priority terminationGracePeriodSeconds",
        bools="automountServiceAccountToken enableServiceLinks hostIPC hostNetwork hostPID "
        "hostUsers setHostnameAsFQDN shareProcessNamespace",
        str_maps="nodeSelector",
    ),
    "overhead": F(T.OBJ),
}

NAMESPACE_SPEC: Schema = _ignored(str_lists="finalizers")

POD: Schema = {
    "apiVersion": F(T.STR, required=True),
    "kind": F(T.STR, required=True),
    "metadata": F(T.OBJ, required=True, child=OBJECT_META),
    "spec": F(T.OBJ, required=True, child=POD_SPEC),
    "status": F(T.OBJ),
}

NAMESPACE: Schema = {
    "apiVersion": F(T.STR, required=True),
    "kind": F(T.STR, required=True),
    "metadata": F(T.OBJ, required=True, child=OBJECT_META),
    "spec": F(T.OBJ, child=NAMESPACE_SPEC),
    "status": F(T.OBJ),
}

HEADER: Schema = {
    "apiVersion": F(T.STR, required=True),
    "kind": F(T.STR, required=True),
    "metadata": F(T.OBJ, required=True, child=OBJECT_META),
}
"""What is checked of objects the lab passes on to their own parser (policies, services)."""


# -- checking ----------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def join(path: str, key: str) -> str:
    """``spec`` + ``containers`` -> ``spec.containers``; odd keys are quoted in brackets."""
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def show(value: Any) -> str:
    """A value as the user wrote it, for messages: strings in double quotes."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _matches(value: Any, t: T) -> bool:
    if t is T.STR:
        return isinstance(value, str)
    if t is T.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is T.INT_OR_STR:
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    if t is T.BOOL:
        return isinstance(value, bool)
    if t in (T.OBJ, T.STR_MAP):
        return isinstance(value, dict)
    if t is T.LIST:
        return isinstance(value, list)
    if t is T.TIME:
        return isinstance(value, (str, datetime.date))
    raise AssertionError(t)


def type_error(value: Any, t: T) -> str:
    """The message for *value* not being of type *t*."""
    hint = ""
    if t is T.STR and isinstance(value, (bool, int, float)):
        hint = f' (quote it: "{show(value)}")'
    if isinstance(value, (dict, list)):
        return f"expected {t.value}, got {show(value)}"
    return f"{show(value)} is not {t.value}{hint}"


def check(obj: Mapping[str, Any], schema: Schema, path: str, where: str) -> None:
    """Check *obj* against *schema*; InputError at ``where: path.field`` for the first problem.

    A null value counts as absent, as in the API server.
    """
    for key in obj:
        if not isinstance(key, str):
            raise InputError(f"{where}: {path or '<document>'}", f"{show(key)} is not a field name")
        if key not in schema:
            raise InputError(f"{where}: {join(path, key)}", "unknown field")
    for key, field in schema.items():
        value = obj.get(key)
        fpath = join(path, key)
        if value is None:
            if field.required:
                raise InputError(f"{where}: {fpath}", "required field is missing")
            continue
        check_value(value, field, fpath, where)


def check_value(value: Any, field: F, path: str, where: str) -> None:
    """Check one non-null value against its field."""
    if not _matches(value, field.type):
        raise InputError(f"{where}: {path}", type_error(value, field.type))
    if field.type is T.STR_MAP:
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(f"{where}: {path}", f"key {show(k)} is not a string")
            if not isinstance(v, str):
                raise InputError(f"{where}: {join(path, k)}", type_error(v, T.STR))
    elif field.type is T.OBJ and field.child is not None:
        check(value, field.child, path, where)
    elif field.type is T.LIST:
        for i, item in enumerate(value):
            ipath = f"{path}[{i}]"
            if field.child is not None:
                if not isinstance(item, dict):
                    raise InputError(f"{where}: {ipath}", type_error(item, T.OBJ))
                check(item, field.child, ipath, where)
            elif field.items is not None and not _matches(item, field.items):
                raise InputError(f"{where}: {ipath}", type_error(item, field.items))
