"""Fixtures: tiny data sets written in each real on-disk format."""

from __future__ import annotations

import pytest
from data_writers import write_cifar100, write_image_folder, write_inat


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar100(tmp_path / "cifar")


@pytest.fixture
def folder_root(tmp_path):
    return write_image_folder(tmp_path / "imagenet")


@pytest.fixture
def inat_root(tmp_path):
    return write_inat(tmp_path / "inat")
