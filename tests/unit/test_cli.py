"""The CLI's parsing, its one-line errors and its output formats."""

from __future__ import annotations

import json

import pytest

from membrane.cli.endpoint_cmd import parse_labels
from membrane.cli.lab_cmd import probe_matrix
from membrane.cli.main import main
from membrane.cli.output import emit, table
from membrane.errors import InputError


def test_table_aligns_columns_and_shows_missing_as_dash() -> None:
    out = table([{"a": 1, "b": "long value"}, {"a": 22}], [("A", "a"), ("B", "b")])
    assert out.splitlines() == ["A   B", "1   long value", "22  -"]


def test_labels_render_as_k_equals_v() -> None:
    assert table([{"l": {"b": "2", "a": "1"}}], [("L", "l")]).splitlines()[1] == "a=1,b=2"


def test_json_output_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    emit([{"id": 1}], "json", [("ID", "id")])
    assert json.loads(capsys.readouterr().out) == [{"id": 1}]


def test_probe_matrix_marks_connected_and_refused() -> None:
    res = {"port": 80, "protocol": "TCP", "results": [
        {"from": "x/a", "to": "x/a", "connected": True},
        {"from": "x/a", "to": "x/b", "connected": False},
        {"from": "x/b", "to": "x/a", "connected": True},
        {"from": "x/b", "to": "x/b", "connected": True},
    ]}
    assert probe_matrix(res).splitlines() == [
        "TCP/80  x/a  x/b",
        "x/a     .    X",
        "x/b     .    .",
    ]


def test_label_arguments_need_k_equals_v() -> None:
    assert parse_labels(["a=1", "b="]) == {"a": "1", "b": ""}
    with pytest.raises(InputError, match="'nope' is not k=v"):
        parse_labels(["nope"])


def test_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("membrane:")


def test_talking_to_no_agent_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("MEMBRANE_NODE", "nonexistent-node-for-test")
    assert main(["status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "nonexistent-node-for-test.sock" in err[0]


def test_bad_lab_name_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "down", "--name", "Bad_Name"]) == 1
    assert "--name: 'Bad_Name' is not a lab name" in capsys.readouterr().err


def test_probe_port_out_of_range_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "probe", "--name", "nosuchlab", "--port", "70000"]) == 1
    assert "--port: 70000 is out of range 1-65535" in capsys.readouterr().err


def test_agent_rejects_bad_pod_cidr(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["agent", "--node", "n", "--state-dir", "/nonexistent", "--pod-cidr", "garbage"])
    assert rc == 1
    assert "--pod-cidr" in capsys.readouterr().err


@pytest.mark.parametrize("ms", ["-1", "1001"])
def test_agent_rejects_a_flush_interval_out_of_range(capsys: pytest.CaptureFixture[str],
                                                     ms: str) -> None:
    rc = main(["agent", "--node", "n", "--state-dir", "/nonexistent",
               "--pod-cidr", "10.200.0.0/16", f"--flow-flush-interval={ms}"])
    assert rc == 1
    assert f"--flow-flush-interval: {ms} is not in 0..1000 ms" in capsys.readouterr().err
