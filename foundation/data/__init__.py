"""The shared data layer: caches, the demo switch, grouped splits, batch helpers, mask sampling."""
from __future__ import annotations

from foundation.data.batch import to_device
from foundation.data.splits import group_split

__all__ = ["to_device", "group_split"]
