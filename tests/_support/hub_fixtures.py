"""pytest fixtures that point the real ``huggingface_hub`` client at a loopback Hub.

``hub_endpoint`` starts :class:`tests._support.hub_server.HubServer` on 127.0.0.1 and isolates the client:
``HF_ENDPOINT`` and a temporary ``HF_HOME`` / cache in the environment (for code that reads it at call
time and for subprocesses, via ``HubEndpoint.env``), and the same values patched into
``huggingface_hub.constants`` (which reads the environment once, at import). Xet is off so files go
inline in the commit call; offline mode is off; a dummy token stands in for a login, so the real
``~/.cache/huggingface`` (and its token) is never read or written.

``dead_endpoint`` is the same isolation pointed at a port that refuses connections.

Use them from a ``conftest.py``::

    from tests._support.hub_fixtures import dead_endpoint, hub_endpoint  # noqa: F401
"""
from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from huggingface_hub import constants

from tests._support.hub_server import HubServer

__all__ = ["HubEndpoint", "hub_endpoint", "dead_endpoint", "TEST_TOKEN"]

TEST_TOKEN = "hf_loopbackTestToken0123456789"  # shaped like a real token, so leaks are detectable


@dataclass
class HubEndpoint:
    """A loopback Hub for one test.

    Attributes:
        url: the endpoint, ``http://127.0.0.1:<port>``.
        server: the running server (None for ``dead_endpoint``); ``server.requests`` logs every call.
        home: the temporary ``HF_HOME``.
        env: the environment variables set, for ``subprocess.run(..., env={**os.environ, **env})``.
    """

    url: str
    server: HubServer | None
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    _caches: int = 0

    def fresh_cache(self) -> Path:
        """A new, empty cache folder (pass as ``cache_dir=``) to prove a download really went over HTTP."""
        self._caches += 1
        path = self.home / f"fresh-cache-{self._caches}"
        path.mkdir()
        return path


def _isolate(url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    cache = home / "hub"
    env = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_TOKEN": TEST_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    patched = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
    }
    for name, value in patched.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    return env


@pytest.fixture
def hub_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEndpoint]:
    """A running loopback Hub, with the client pointed at it and its cache under ``tmp_path``."""
    home = tmp_path / "hf_home"
    home.mkdir()
    with HubServer() as server:
        env = _isolate(server.endpoint, home, monkeypatch)
        yield HubEndpoint(url=server.endpoint, server=server, home=home, env=env)


@pytest.fixture
def dead_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEndpoint]:
    """An endpoint on 127.0.0.1 whose port is bound but not listening, so every connection is refused."""
    home = tmp_path / "hf_home"
    home.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # held (not listening) for the whole test: no one else can take the port
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = _isolate(url, home, monkeypatch)
        yield HubEndpoint(url=url, server=None, home=home, env=env)
