"""Hub test fixtures: a loopback Hub server (``hub_endpoint``) and a refusing endpoint (``dead_endpoint``)."""
from tests._support.hub_fixtures import dead_endpoint, hub_endpoint  # noqa: F401
