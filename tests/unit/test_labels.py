"""Labels: parsing, naming, filtering of high-cardinality labels."""

from __future__ import annotations

from membrane.labels import Label, LabelFilter, Labels, security_labels


def test_security_labels_are_named_as_cilium_names_them() -> None:
    labels = security_labels({"role": "web"}, "prod", {"team": "a"})
    assert labels.to_list() == [
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.kubernetes.pod.namespace=prod",
        "k8s:role=web",
    ]
    assert str(labels).endswith("k8s:io.kubernetes.pod.namespace=prod,k8s:role=web")


def test_without_namespace_only_own_labels() -> None:
    assert security_labels({"a": "1"}, None, {"team": "x"}).to_list() == ["k8s:a=1"]


def test_high_cardinality_labels_never_enter_an_identity() -> None:
    noisy = {
        "pod-template-hash": "abc", "controller-revision-hash": "1",
        "statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0",
        "batch.kubernetes.io/job-completion-index": "3", "batch.kubernetes.io/controller-uid": "u",
        "controller-uid": "u", "job-name": "j", "batch.kubernetes.io/job-name": "j",
        "pod-template-generation": "2",
    }
    a = security_labels({"app": "web", **noisy}, "x", {})
    assert a == security_labels({"app": "web"}, "x", {})


def test_include_filter_keeps_only_matching_keys() -> None:
    f = LabelFilter(include=(r"app$",))
    assert security_labels({"app": "w", "other": "1"}, None, {}, f).to_list() == ["k8s:app=w"]


def test_cilium_style_args_add_exclusions() -> None:
    f = LabelFilter.from_args(["!team"])
    assert security_labels({"app": "w", "team": "t"}, None, {}, f).to_list() == ["k8s:app=w"]


def test_label_parse_and_str_round_trip() -> None:
    assert str(Label.parse("k8s:role=web")) == "k8s:role=web"
    assert Label.parse("role=web") == Label("any", "role", "web")
    assert Label.parse("role=a:b") == Label("any", "role", "a:b")
    assert str(Label.parse("reserved:host")) == "reserved:host"


def test_labels_are_sorted_hashable_and_deduplicated() -> None:
    a = Labels.parse(["role=web", "app=x", "app=x"])
    b = Labels.from_dict({"app": "x", "role": "web"})
    assert a == b and hash(a) == hash(b) and len(a) == 2
    assert a.to_list() == ["k8s:app=x", "k8s:role=web"]
    assert a.to_dict() == {"k8s:app": "x", "k8s:role": "web"}
    assert a.get("role") == "web" and a.get("role", "reserved") is None
    assert Label("k8s", "app", "x") in a
