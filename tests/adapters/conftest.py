"""Adapter test fixtures: the loopback Hub (``hub_endpoint``) for push/download round trips."""
from tests._support.hub_fixtures import hub_endpoint  # noqa: F401
