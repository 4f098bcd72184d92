"""Lab manifests: what a kubectl user may write, and the errors that name the place."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from membrane.errors import InputError
from membrane.k8s.manifests import (
    Container,
    ContainerPort,
    Namespace,
    Pod,
    RawObject,
    check_labels,
    label_errors,
    load_manifests,
    parse_label_args,
)

WEB1 = "farm.yaml: document 1 (Pod default/web-1)"


def load(text: str) -> list[object]:
    return list(load_manifests(textwrap.dedent(text), "farm.yaml"))


def error(text: str) -> InputError:
    with pytest.raises(InputError) as info:
        load(text)
    return info.value


def pod_yaml(port_block: str = "", *, name: str = "web-1", extra_spec: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: {name}
          labels: {{app: web}}
        spec:
          containers:
          - name: web
        """) + textwrap.indent(textwrap.dedent(port_block), "    ") + extra_spec


def one_port(line: str) -> str:
    return pod_yaml(f"""\
        ports:
        - {line}
        """)


# -- accepted objects -----------------------------------------------------------------------------


def test_pod_with_ports_is_parsed_with_defaults() -> None:
    [pod] = load(pod_yaml("""\
        ports:
        - containerPort: 80
          name: http
        - containerPort: 53
          protocol: UDP
        """))
    assert isinstance(pod, Pod)
    assert pod.key == "default/web-1"
    assert dict(pod.labels) == {"app": "web"}
    assert pod.ports == (
        ContainerPort(name="http", container_port=80, protocol="TCP"),
        ContainerPort(name=None, container_port=53, protocol="UDP"),
    )
    assert pod.named_port("http") == ContainerPort(name="http", container_port=80)
    assert pod.named_port("dns") is None
    assert pod.where == "farm.yaml: document 1 (Pod default/web-1)"


def test_pod_to_k8s_is_kubernetes_shaped() -> None:
    pod = Pod(namespace="shop", name="db", labels={"app": "db"},
              containers=(Container(name="pg", ports=(ContainerPort(
                  name="pg", container_port=5432),)),))
    assert pod.to_k8s() == {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "pg", "ports": [
            {"name": "pg", "containerPort": 5432, "protocol": "TCP"}]}]},
    }
    assert hash(pod) == hash(Pod(namespace="shop", name="db", labels={"app": "db"},
                                 containers=pod.containers))


def test_namespace_gets_its_metadata_name_label() -> None:
    [ns] = load("""\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
          labels: {team: a}
        """)
    assert isinstance(ns, Namespace)
    assert dict(ns.labels) == {"team": "a", "kubernetes.io/metadata.name": "shop"}
    assert ns.to_k8s()["metadata"]["labels"]["kubernetes.io/metadata.name"] == "shop"


def test_namespace_with_matching_metadata_name_label_is_accepted() -> None:
    [ns] = load("""\
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
        """)
    assert isinstance(ns, Namespace)


def test_namespace_with_differing_metadata_name_label_is_rejected() -> None:
    e = error("""\
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, labels: {kubernetes.io/metadata.name: other}}
        """)
    assert e.where == ('farm.yaml: document 1 (Namespace shop): '
                       'metadata.labels["kubernetes.io/metadata.name"]')


def test_policies_and_services_come_back_raw_with_their_document() -> None:
    docs = load("""\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: shop}
        spec: {podSelector: {}}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-web}
        spec: {endpointSelector: {}}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: world}
        spec: {endpointSelector: {}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        """)
    assert all(isinstance(d, RawObject) for d in docs)
    raw = [d for d in docs if isinstance(d, RawObject)]
    assert [(r.kind, r.namespace, r.name) for r in raw] == [
        ("NetworkPolicy", "shop", "deny"),
        ("CiliumNetworkPolicy", "default", "allow-web"),
        ("CiliumClusterwideNetworkPolicy", None, "world"),
        ("Service", "default", "web"),
    ]
    assert raw[1].where == "farm.yaml: document 2 (CiliumNetworkPolicy default/allow-web)"
    assert raw[3].body["spec"] == {"ports": [{"port": 80}]}


def test_empty_documents_are_skipped_but_counted() -> None:
    e = error("---\n---\n" + one_port("containerPort: 70000"))
    assert e.where.startswith("farm.yaml: document 2 (Pod default/web-1)")
    assert load("---\n# nothing\n---\n") == []


def test_realistic_deployment_template_pod_is_accepted() -> None:
    [pod] = load("""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: checkout-7d9f8b6c5-x2x9z
          namespace: shop
          generateName: checkout-7d9f8b6c5-
          labels:
            app.kubernetes.io/name: checkout
            pod-template-hash: 7d9f8b6c5
            empty: ""
          annotations:
            prometheus.io/scrape: "true"
          creationTimestamp: 2024-05-01T10:00:00Z
          ownerReferences:
          - apiVersion: apps/v1
            kind: ReplicaSet
            name: checkout-7d9f8b6c5
            uid: 1234
            controller: true
          uid: 0b6f-11
          resourceVersion: "42"
          finalizers: [x/y]
        spec:
          serviceAccountName: checkout
          restartPolicy: Always
          terminationGracePeriodSeconds: 30
          nodeName: node-1
          nodeSelector: {kubernetes.io/os: linux}
          tolerations: [{key: a, operator: Exists}]
          affinity: {podAntiAffinity: {}}
          securityContext: {runAsNonRoot: true}
          dnsPolicy: ClusterFirst
          enableServiceLinks: false
          volumes:
          - name: config
            configMap: {name: checkout}
          initContainers:
          - name: migrate
            image: ghcr.io/shop/migrate:1.2
            command: [/migrate]
          containers:
          - name: checkout
            image: ghcr.io/shop/checkout:1.2.3
            imagePullPolicy: IfNotPresent
            command: ["/bin/checkout"]
            args: ["--port=8080"]
            env:
            - name: LOG_LEVEL
              value: info
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            envFrom: [{configMapRef: {name: checkout}}]
            resources:
              requests: {cpu: 100m, memory: 128Mi}
              limits: {memory: 256Mi}
            ports:
            - name: http
              containerPort: 8080
              protocol: TCP
            - name: metrics
              containerPort: 9090
            livenessProbe:
              httpGet: {path: /healthz, port: http}
              initialDelaySeconds: 5
            readinessProbe:
              tcpSocket: {port: 8080}
            startupProbe:
              exec: {command: [/bin/true]}
            lifecycle: {preStop: {exec: {command: [sleep, "5"]}}}
            volumeMounts:
            - name: config
              mountPath: /etc/checkout
              readOnly: true
            securityContext: {readOnlyRootFilesystem: true}
            terminationMessagePolicy: FallbackToLogsOnError
            workingDir: /app
            stdin: false
            tty: false
          - name: sidecar
            image: envoy
            ports: [{containerPort: 15000, name: admin}]
        status:
          phase: Running
          podIP: 10.0.0.5
        """)
    assert isinstance(pod, Pod)
    assert pod.key == "shop/checkout-7d9f8b6c5-x2x9z"
    assert [c.name for c in pod.containers] == ["checkout", "sidecar"]
    assert [p.container_port for p in pod.ports] == [8080, 9090, 15000]
    assert pod.labels["empty"] == ""


def test_null_fields_count_as_absent() -> None:
    [pod] = load("""\
        apiVersion: v1
        kind: Pod
        metadata: {name: p, creationTimestamp: null, labels: null}
        spec:
          containers: [{name: c, ports: null, resources: {}}]
        status: {}
        """)
    assert isinstance(pod, Pod)
    assert pod.ports == ()


# -- YAML and document-level errors ---------------------------------------------------------------


def test_malformed_yaml_names_file_and_line() -> None:
    e = error("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n")
    assert e.where.startswith("farm.yaml: line 5")
    assert e.message.startswith("invalid YAML: ")
    assert "started on line 4" in e.message


def test_duplicate_yaml_key_is_rejected_with_its_line() -> None:
    e = error("apiVersion: v1\nkind: Pod\nkind: Pod\n")
    assert e.where == "farm.yaml: line 3, column 1"
    assert '"kind" is already defined' in e.message


def test_document_that_is_not_a_mapping_is_rejected() -> None:
    e = error("- a\n- b\n")
    assert e.where == "farm.yaml: document 1"


def test_unknown_kind_is_rejected() -> None:
    e = error("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    assert e.where == "farm.yaml: document 1: kind"
    assert '"Deployment" is not supported' in e.message


def test_wrong_api_version_is_rejected() -> None:
    e = error("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: x}\n")
    assert e.where == "farm.yaml: document 1: apiVersion"
    assert "networking.k8s.io/v1" in e.message


@pytest.mark.parametrize(("text", "where"), [
    ("apiVersion: v1\nmetadata: {name: x}\n", "farm.yaml: document 1: kind"),
    ("kind: Pod\nmetadata: {name: x}\n", "farm.yaml: document 1: apiVersion"),
    ("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: a}]}\n",
     "farm.yaml: document 1 (Pod): metadata"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\n",
     "farm.yaml: document 1 (Pod): metadata.name"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
     "farm.yaml: document 1 (Pod default/x): spec"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n",
     "farm.yaml: document 1 (Pod default/x): spec.containers"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{image: a}]}\n",
     "farm.yaml: document 1 (Pod default/x): spec.containers[0].name"),
])
def test_missing_required_field_is_named(text: str, where: str) -> None:
    e = error(text)
    assert e.where == where
    assert "required" in e.message


def test_pod_without_containers_is_rejected() -> None:
    e = error("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n")
    assert e.where.endswith("spec.containers")


def test_error_renders_as_one_line_naming_file_document_object_and_path() -> None:
    second = one_port("containerPort: 70000").replace("name: web-1", "name: web-2")
    e = error(pod_yaml() + "---\n" + second)
    assert str(e) == ("farm.yaml: document 2 (Pod default/web-2): "
                      "spec.containers[0].ports[0].containerPort: 70000 is out of range 1-65535")


def test_missing_container_port_is_named() -> None:
    e = error(one_port("name: http"))
    assert e.where == f"{WEB1}: spec.containers[0].ports[0].containerPort"


def test_duplicate_objects_in_one_file_name_both_documents() -> None:
    e = error(pod_yaml() + "---\n" + pod_yaml())
    assert e.where == "farm.yaml: document 2 (Pod default/web-1)"
    assert "document 1 (Pod default/web-1)" in e.message


def test_same_name_in_other_namespace_or_kind_is_not_a_duplicate() -> None:
    other_ns = pod_yaml().replace("  name: web-1", "  name: web-1\n  namespace: b")
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: web-1}\n"
    docs = load(pod_yaml() + "---\n" + other_ns + "---\n" + service)
    assert len(docs) == 3


# -- schema: unknown fields and types -------------------------------------------------------------


def test_unknown_field_in_container_is_rejected_with_path() -> None:
    e = error(pod_yaml("portz: []\n"))
    assert e.where == "farm.yaml: document 1 (Pod default/web-1): spec.containers[0].portz"
    assert e.message == "unknown field"


@pytest.mark.parametrize(("text", "path"), [
    (pod_yaml(extra_spec="  hostnetwork: true\n"), "spec.hostnetwork"),
    (pod_yaml() + "statuz: {}\n", "statuz"),
    (one_port("{containerPort: 80, port: 80}"), "spec.containers[0].ports[0].port"),
    (pod_yaml().replace("  labels:", "  lables:"), "metadata.lables"),
])
def test_unknown_fields_anywhere_we_parse_are_named(text: str, path: str) -> None:
    e = error(text)
    assert e.where == f"farm.yaml: document 1 (Pod default/web-1): {path}"
    assert e.message == "unknown field"


def test_wrong_type_is_named_with_the_value() -> None:
    e = error(one_port("containerPort: eighty"))
    assert e.where.endswith("spec.containers[0].ports[0].containerPort")
    assert e.message == '"eighty" is not an integer'


@pytest.mark.parametrize(("text", "path"), [
    (pod_yaml("image: 3\n"), "spec.containers[0].image"),
    (pod_yaml("resources: []\n"), "spec.containers[0].resources"),
    (pod_yaml("command: /bin/sh\n"), "spec.containers[0].command"),
    (pod_yaml("args: [1]\n"), "spec.containers[0].args[0]"),
    (pod_yaml(extra_spec="  volumes: {}\n"), "spec.volumes"),
    (pod_yaml(extra_spec="  hostNetwork: yes please\n"), "spec.hostNetwork"),
    (pod_yaml().replace("{app: web}", "{app: true}"), "metadata.labels.app"),
    (pod_yaml().replace("{app: web}", "[app]"), "metadata.labels"),
    (pod_yaml("ports: {containerPort: 80}\n"), "spec.containers[0].ports"),
    (pod_yaml("ports: [80]\n"), "spec.containers[0].ports[0]"),
])
def test_wrong_types_of_ignored_and_parsed_fields_are_named(text: str, path: str) -> None:
    e = error(text)
    assert e.where == f"farm.yaml: document 1 (Pod default/web-1): {path}"


def test_unquoted_boolean_label_value_gets_a_hint() -> None:
    e = error(pod_yaml().replace("{app: web}", "{canary: true}"))
    assert e.message == 'true is not a string (quote it: "true")'


# -- names, labels and ports ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Web", "web_1", "-web", "web-", "a" * 254, "web..x"])
def test_invalid_pod_names_are_rejected(name: str) -> None:
    e = error(pod_yaml(name=f'"{name}"'))
    assert e.where.endswith("metadata.name")


@pytest.mark.parametrize("name", ["web", "web.shop-1", "a" * 253, "1"])
def test_valid_pod_names_are_accepted(name: str) -> None:
    assert len(load(pod_yaml(name=f'"{name}"'))) == 1


def test_namespace_names_are_dns_labels() -> None:
    e = error("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n")
    assert e.where == "farm.yaml: document 1 (Namespace): metadata.name"
    e = error(pod_yaml().replace("  name: web-1", "  name: web-1\n  namespace: " + "n" * 64))
    assert e.where.endswith("metadata.namespace")
    assert "63" in e.message


@pytest.mark.parametrize("key", [
    "a" * 64, "-a", "a-", "a b", "/a", "a/", "Example.com/a", "a/b/c", "x" * 254 + "/a", "",
])
def test_invalid_label_keys_are_rejected(key: str) -> None:
    e = error(pod_yaml().replace("{app: web}", f'{{"{key}": v}}'))
    assert "metadata.labels" in e.where
    assert "label key" in e.message


@pytest.mark.parametrize("key", ["a", "a" * 63, "A_b.c-d", "example.com/a", "k8s.io/Name_1"])
def test_valid_label_keys_are_accepted(key: str) -> None:
    assert load(pod_yaml().replace("{app: web}", f'{{"{key}": v}}'))


@pytest.mark.parametrize("value", ["v" * 64, "-v", "v-", "a b", "a/b"])
def test_invalid_label_values_are_rejected(value: str) -> None:
    e = error(pod_yaml().replace("{app: web}", f'{{app: "{value}"}}'))
    assert e.where.endswith("metadata.labels.app")
    assert "label value" in e.message


@pytest.mark.parametrize("port", [0, 65536, 70000, -1])
def test_container_port_out_of_range_is_rejected(port: int) -> None:
    e = error(one_port(f"containerPort: {port}"))
    assert e.where == f"{WEB1}: spec.containers[0].ports[0].containerPort"
    assert e.message == f"{port} is out of range 1-65535"


def test_container_port_limits_are_accepted() -> None:
    [pod] = load(pod_yaml("ports: [{containerPort: 1}, {containerPort: 65535}]\n"))
    assert isinstance(pod, Pod)
    assert [p.container_port for p in pod.ports] == [1, 65535]


def test_host_port_out_of_range_is_rejected() -> None:
    e = error(one_port("{containerPort: 80, hostPort: 70000}"))
    assert e.where.endswith("ports[0].hostPort")


@pytest.mark.parametrize("protocol", ["tcp", "HTTP", "ICMP"])
def test_unsupported_protocol_is_rejected(protocol: str) -> None:
    e = error(one_port(f"{{containerPort: 80, protocol: {protocol}}}"))
    assert e.where.endswith("ports[0].protocol")
    assert "TCP, UDP or SCTP" in e.message


def test_sctp_is_accepted() -> None:
    [pod] = load(one_port("{containerPort: 9, protocol: SCTP}"))
    assert isinstance(pod, Pod)
    assert pod.ports[0].protocol == "SCTP"


@pytest.mark.parametrize("name", ["", "HTTP", "a" * 16, "-http", "http-", "ht--tp", "8080", "h_t"])
def test_invalid_port_names_are_rejected(name: str) -> None:
    e = error(one_port(f'{{containerPort: 80, name: "{name}"}}'))
    assert e.where.endswith("ports[0].name")


@pytest.mark.parametrize("name", ["http", "h2c", "a" * 15, "grpc-web", "8080x"])
def test_valid_port_names_are_accepted(name: str) -> None:
    [pod] = load(one_port(f'{{containerPort: 80, name: "{name}"}}'))
    assert isinstance(pod, Pod)
    assert pod.named_port(name) is not None


def test_port_names_are_unique_across_the_pods_containers() -> None:
    e = error(pod_yaml("ports: [{containerPort: 80, name: http}]\n",
                       extra_spec="  - name: b\n    ports: [{containerPort: 81, name: http}]\n"))
    assert e.where.endswith("spec.containers[1].ports[0].name")
    assert "spec.containers[0].ports[0]" in e.message


def test_same_port_and_protocol_twice_in_a_pod_is_rejected() -> None:
    e = error(pod_yaml("ports: [{containerPort: 80}, {containerPort: 80, protocol: TCP}]\n"))
    assert e.where.endswith("spec.containers[0].ports[1]")
    assert "80/TCP" in e.message


def test_same_port_with_other_protocol_is_accepted() -> None:
    [pod] = load(pod_yaml("ports: [{containerPort: 53}, {containerPort: 53, protocol: UDP}]\n"))
    assert isinstance(pod, Pod)
    assert len(pod.ports) == 2


def test_container_names_are_unique_per_pod() -> None:
    e = error(pod_yaml(extra_spec="  - name: web\n"))
    assert e.where.endswith("spec.containers[1].name")
    e = error(pod_yaml(extra_spec="  initContainers: [{name: web}]\n"))
    assert e.where.endswith("spec.containers[0].name")


def test_container_names_are_dns_labels() -> None:
    e = error(pod_yaml().replace("- name: web", "- name: Web_1"))
    assert e.where.endswith("spec.containers[0].name")


# -- kubectl label syntax -------------------------------------------------------------------------


def test_label_args_set_and_remove() -> None:
    assert parse_label_args(["app=web", "tier=", "old-", "example.com/x-"], "label") == (
        {"app": "web", "tier": ""}, {"old", "example.com/x"})


@pytest.mark.parametrize("args", [
    ["app"], ["-"], ["=v"], ["-a=b"], ["app=-x"], ["app=web", "app-"], ["app=a", "app=b"],
    ["bad key-"], ["a" * 64 + "=v"],
])
def test_bad_label_args_are_rejected_naming_where(args: list[str]) -> None:
    with pytest.raises(InputError) as info:
        parse_label_args(args, "membrane lab label default/web-1")
    assert info.value.where == "membrane lab label default/web-1"


def test_repeated_identical_label_arg_is_accepted() -> None:
    assert parse_label_args(["a=b", "a=b"], "x") == ({"a": "b"}, set())


# -- the schema knows every field of the Kubernetes v1 objects we parse ---------------------------

POD_SPEC_FIELDS = {
    "activeDeadlineSeconds": 60, "affinity": {}, "automountServiceAccountToken": False,
    "dnsConfig": {"nameservers": ["1.1.1.1"]}, "dnsPolicy": "None", "enableServiceLinks": True,
    "ephemeralContainers": [], "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["a"]}],
    "hostIPC": False, "hostNetwork": False, "hostPID": False, "hostUsers": True,
    "hostname": "h", "imagePullSecrets": [{"name": "reg"}], "nodeName": "n1",
    "nodeSelector": {"disk": "ssd"}, "os": {"name": "linux"}, "overhead": {"cpu": "250m"},
    "preemptionPolicy": "Never", "priority": 1000, "priorityClassName": "high",
    "readinessGates": [], "resourceClaims": [], "resources": {"limits": {"cpu": 1}},
    "restartPolicy": "Never", "runtimeClassName": "runc", "schedulerName": "default-scheduler",
    "schedulingGates": [], "securityContext": {}, "serviceAccount": "sa",
    "serviceAccountName": "sa", "setHostnameAsFQDN": False, "shareProcessNamespace": False,
    "subdomain": "s", "terminationGracePeriodSeconds": 0, "tolerations": [],
    "topologySpreadConstraints": [], "volumes": [{"name": "v", "emptyDir": {}}],
}
CONTAINER_FIELDS = {
    "args": ["a"], "command": ["c"], "env": [{"name": "A", "value": "1"}], "envFrom": [],
    "image": "busybox", "imagePullPolicy": "Always", "lifecycle": {}, "livenessProbe": {},
    "readinessProbe": {}, "resizePolicy": [], "resources": {}, "restartPolicy": "Always",
    "securityContext": {}, "startupProbe": {}, "stdin": True, "stdinOnce": True,
    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
    "tty": True, "volumeDevices": [], "volumeMounts": [], "workingDir": "/",
}
OBJECT_META_FIELDS = {
    "annotations": {"a": "b"}, "creationTimestamp": "2024-01-01T00:00:00Z",
    "deletionGracePeriodSeconds": 30, "deletionTimestamp": "2024-01-01T00:00:00Z",
    "finalizers": ["f"], "generateName": "p-", "generation": 1, "managedFields": [],
    "ownerReferences": [], "resourceVersion": "1", "selfLink": "/x", "uid": "u",
}


def pod_doc(meta: dict[str, object] | None = None, spec: dict[str, object] | None = None,
            container: dict[str, object] | None = None) -> str:
    import json  # JSON is YAML: exact values, no quoting surprises

    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", **(meta or {})},
           "spec": {"containers": [{"name": "c", **(container or {})}], **(spec or {})}}
    return json.dumps(doc)


@pytest.mark.parametrize(("field", "value"), POD_SPEC_FIELDS.items())
def test_every_pod_spec_field_is_accepted(field: str, value: object) -> None:
    assert isinstance(load(pod_doc(spec={field: value}))[0], Pod)


@pytest.mark.parametrize(("field", "value"), CONTAINER_FIELDS.items())
def test_every_container_field_is_accepted(field: str, value: object) -> None:
    assert isinstance(load(pod_doc(container={field: value}))[0], Pod)


@pytest.mark.parametrize(("field", "value"), OBJECT_META_FIELDS.items())
def test_every_object_meta_field_is_accepted(field: str, value: object) -> None:
    assert isinstance(load(pod_doc(meta={field: value}))[0], Pod)


def test_host_port_and_host_ip_are_accepted() -> None:
    [pod] = load(one_port("{containerPort: 80, hostPort: 8080, hostIP: 0.0.0.0}"))
    assert isinstance(pod, Pod)
    assert pod.ports[0].container_port == 80


def test_status_of_any_shape_of_object_is_ignored() -> None:
    [pod] = load(pod_yaml() + "status: {phase: Running, conditions: [{type: Ready}], x: 1}\n")
    assert isinstance(pod, Pod)


def test_init_container_ports_are_not_served_but_names_stay_unique() -> None:
    [pod] = load(pod_doc(spec={"initContainers": [
        {"name": "init", "ports": [{"containerPort": 9000}]}]}))
    assert isinstance(pod, Pod)
    assert [c.name for c in pod.containers] == ["c"]
    e = error(pod_doc(spec={"initContainers": [{"name": "c"}]}))
    assert e.where.endswith("spec.containers[0].name")
    assert "spec.initContainers[0]" in e.message


def test_unknown_field_in_init_container_is_rejected_with_path() -> None:
    e = error(pod_doc(spec={"initContainers": [{"name": "i", "imagee": "x"}]}))
    assert e.where == "farm.yaml: document 1 (Pod default/p): spec.initContainers[0].imagee"


def test_namespace_spec_and_status_are_accepted_and_unknown_fields_rejected() -> None:
    [ns] = load("""\
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop, annotations: {owner: a}}
        spec: {finalizers: [kubernetes]}
        status: {phase: Active}
        """)
    assert isinstance(ns, Namespace)
    e = error("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {finalizerz: []}\n")
    assert e.where == "farm.yaml: document 1 (Namespace shop): spec.finalizerz"
    assert e.message == "unknown field"


def test_namespace_names_longer_than_a_dns_label_are_rejected() -> None:
    e = error(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {'a' * 64}}}\n")
    assert e.where.endswith("metadata.name")
    assert "63" in e.message


def test_pod_in_an_invalid_namespace_is_rejected() -> None:
    e = error(pod_doc(meta={"namespace": "Shop"}))
    assert e.where.endswith("metadata.namespace")


def test_raw_objects_have_their_metadata_validated() -> None:
    e = error("apiVersion: v1\nkind: Service\nmetadata: {name: web, labelz: {}}\n")
    assert e.where == "farm.yaml: document 1 (Service default/web): metadata.labelz"
    e = error("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
              "metadata: {name: p, labels: {'-bad': x}}\n")
    assert e.where.startswith("farm.yaml: document 1 (CiliumNetworkPolicy default/p): "
                              "metadata.labels")


def test_cilium_policy_with_networking_api_version_is_rejected() -> None:
    e = error("apiVersion: networking.k8s.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n")
    assert e.where == "farm.yaml: document 1: apiVersion"
    assert "cilium.io/v2" in e.message


def test_duplicate_namespaces_and_cluster_policies_are_detected() -> None:
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    e = error(ns + "---\n" + ns)
    assert e.where == "farm.yaml: document 2 (Namespace shop)"
    assert e.message == "duplicate of document 1 (Namespace shop)"


def test_label_key_prefix_longer_than_253_is_rejected() -> None:
    key = ("a" * 60 + ".") * 4 + "a" * 20 + "/x"
    assert len(key.partition("/")[0]) > 253
    e = error(pod_yaml().replace("{app: web}", f"{{{key}: v}}"))
    assert "253" in e.message


# -- label validators the CLI and the runtime reuse -----------------------------------------------


def test_label_errors_lists_every_problem_at_where() -> None:
    errors = label_errors({"app": "web", "b@d": "x", "v": True, "ok": "-x"}, "lab label")
    assert [e.where for e in errors] == ["lab label"] * 3
    assert 'label key "b@d"' in errors[0].message
    assert errors[1].message == 'label "v": true is not a string (quote it: "true")'
    assert 'label value "-x"' in errors[2].message
    assert label_errors({"app": "web", "example.com/tier": ""}, "x") == []


def test_label_errors_with_a_path_name_the_key() -> None:
    [e] = label_errors({"a/b": "x y"}, "f.yaml: document 1", "metadata.labels")
    assert e.where == 'f.yaml: document 1: metadata.labels["a/b"]'


def test_check_labels_raises_the_first_problem() -> None:
    with pytest.raises(InputError, match=r"^x: label key \"-a\""):
        check_labels({"-a": "b", "c": "-d"}, "x")
    check_labels({"a": "b"}, "x")


# -- property: what the lab writes back, it reads again -------------------------------------------

_dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
_label_name = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True)
_port_name = st.from_regex(r"[a-z]([a-z0-9]{0,5}-?[a-z0-9]{1,5})?", fullmatch=True)


@st.composite
def pods(draw: st.DrawFn) -> Pod:
    ports = draw(st.lists(st.tuples(st.integers(1, 65535), st.sampled_from(["TCP", "UDP", "SCTP"])),
                          unique=True, max_size=4))
    names = draw(st.lists(_port_name, unique=True, min_size=len(ports), max_size=len(ports)))
    named = draw(st.lists(st.booleans(), min_size=len(ports), max_size=len(ports)))
    cports = tuple(ContainerPort(name=n if use else None, container_port=p, protocol=proto)
                   for (p, proto), n, use in zip(ports, names, named, strict=True))
    labels = draw(st.dictionaries(_label_name, st.one_of(st.just(""), _label_name), max_size=4))
    return Pod(namespace=draw(_dns_label), name=draw(_dns_label), labels=labels,
               containers=(Container(name=draw(_dns_label), ports=cports),))


@settings(max_examples=100, deadline=None)
@given(pods())
def test_pod_written_as_kubernetes_yaml_reads_back_equal(pod: Pod) -> None:
    [again] = load_manifests(yaml.safe_dump(pod.to_k8s()), "pod.yaml")
    assert again == pod
