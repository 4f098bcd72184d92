"""Arguments shared by many commands: --node and -o."""

from __future__ import annotations

import argparse


def add_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="agent to talk to (default: $MEMBRANE_NODE or the only one)")


def add_output(p: argparse.ArgumentParser, choices: tuple[str, ...] = ("table", "json")) -> None:
    p.add_argument("-o", "--output", choices=choices, default=choices[0], help="output format")
