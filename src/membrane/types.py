"""Identifier types shared by every package: defined once, here."""

from typing import NewType

EndpointID = NewType("EndpointID", int)
"""Node-local endpoint id, 1..65535, stable across agent restarts."""

Identity = NewType("Identity", int)
"""Security identity: 0 unknown, 1 host, 2 world, ... label identities from 256."""

NodeName = NewType("NodeName", str)
"""Name of a node; also names its agent socket, pin directory and state."""

IfIndex = NewType("IfIndex", int)
"""Kernel interface index, valid inside one network namespace."""
