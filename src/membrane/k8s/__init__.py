"""Kubernetes objects as text: the YAML loader, the schema checker and the object values.

Pure and at the bottom of the layering: the lab, the agent and the policy parser all read
Kubernetes YAML through it.
"""
