"""The release context's held-out sample: the version's own snapshot, in the input convention it records."""

from __future__ import annotations

import json
import shutil

import numpy as np

from pipeline.models import RAW_PIXEL_SCALE, to_model_inputs
from pipeline.release.context import Release
from pipeline.settings import get_paths
from pipeline.wire import version_dirs as vd
from tests.conftest import write_image_snapshot
from tests.release.core_world import SAMPLE_SIZE, core_model_config


def _write_version(release: Release, version: int, metadata: dict) -> None:
    """Just the metadata of a version dir: all the held-out sample reads."""
    extra = release.version_dir(version) / vd.ASSETS_EXTRA
    extra.mkdir(parents=True)
    (extra / vd.METADATA_FILE).write_text(json.dumps(metadata))


def test_held_out_sample_follows_each_versions_recorded_input_convention(tmp_path) -> None:
    snapshot = write_image_snapshot(tmp_path / "snapshot", sizes={"train": 10, "val": 10, "test": SAMPLE_SIZE + 20})
    release = Release(core_model_config("ctx"), paths=get_paths(tmp_path / "home"))
    shutil.copytree(snapshot.path, release.paths.data_dir / "ctx" / snapshot.sha256)
    _write_version(release, 1, {"data_snapshot_sha256": snapshot.sha256})
    _write_version(release, 2, {"data_snapshot_sha256": snapshot.sha256, "input_convention": {"pixel_scale": 255.0}})
    test = snapshot.split("test")

    client_inputs, labels = release.held_out_sample(1)
    np.testing.assert_array_equal(client_inputs, to_model_inputs(test)[:SAMPLE_SIZE])
    np.testing.assert_array_equal(labels, test.y[:SAMPLE_SIZE])
    raw_inputs, raw_labels = release.held_out_sample(2)
    np.testing.assert_array_equal(raw_inputs, to_model_inputs(test, RAW_PIXEL_SCALE)[:SAMPLE_SIZE])
    np.testing.assert_array_equal(raw_labels, labels)
    assert client_inputs.max() == 1.0 and raw_inputs.max() == 255.0
