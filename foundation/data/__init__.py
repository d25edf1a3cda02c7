"""The shared data layer: caches, the demo switch, grouped splits, batch helpers, mask sampling, the Dataset protocol."""
from __future__ import annotations

from foundation.data.batch import to_device
from foundation.data.cache import CacheBuilder, DataCache, Part, fingerprint, path_signature
from foundation.data.demo import DEMO, check_source, demo_folder, is_demo, make_once
from foundation.data.masking import n_visible, sample_keep
from foundation.data.protocol import DatasetProtocol, prepare_dataset
from foundation.data.splits import group_kfold, group_split

__all__ = ["to_device", "group_split", "group_kfold", "CacheBuilder", "DataCache", "Part", "fingerprint", "path_signature", "DEMO",
           "check_source", "demo_folder", "is_demo", "make_once", "n_visible", "sample_keep", "DatasetProtocol",
           "prepare_dataset"]
