"""membrane: eBPF-powered, identity-aware networking, security and visibility for containers."""

__version__ = "0.1.0"
