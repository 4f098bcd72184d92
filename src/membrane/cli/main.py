"""`membrane`: the command line. Parses, dispatches to one module per noun, prints errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from membrane.cli import (
    agent_cmd,
    bpf_cmd,
    endpoint_cmd,
    lab_cmd,
    observe_cmd,
    policy_cmd,
    service_cmd,
    status_cmd,
)
from membrane.errors import MembraneError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One clear line and a non-zero exit, like every other membrane error.
        sys.stderr.write(f"membrane: {self.prog}: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="membrane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (agent_cmd, status_cmd, endpoint_cmd, policy_cmd, service_cmd, bpf_cmd,
                   observe_cmd, lab_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("MEMBRANE_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc = args.func(args)
    except MembraneError as e:
        sys.stderr.write(f"membrane: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
