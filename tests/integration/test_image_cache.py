"""The image cache (tests/support/images.py) with small images from scratch: keyed by content,
exported as docker-archives that name the image, loaded back into a storage that lost them, and
pruned when unused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.oci import image_config

pytestmark = pytest.mark.images


def _scratch(repository: str, tmp_path: Path, content: str) -> images.Image:
    source = tmp_path / content
    source.mkdir(parents=True)
    (source / "hello").write_text(content)
    (source / "hello").chmod(0o755)
    return images.scratch_image(repository, {"/hello": source / "hello"}, entrypoint=["/hello"], cmd=["world"])


def _remove(image: images.Image) -> None:
    with images.storage_lock.held():
        if images.in_storage(image.name):
            images.buildah("rmi", "--force", image.name)
    image.archive.unlink(missing_ok=True)
    image.archive.with_suffix(".json").unlink(missing_ok=True)


REPOSITORY = "flowkeeper-cache-test"


def _remove_all() -> None:
    """Every image of REPOSITORY, also those a failed run left."""
    for record in (images.images_root() / "archives").glob(f"{REPOSITORY}-*.json"):
        name = json.loads(record.read_text())["name"]
        _remove(images.Image(name=name, archive=record.with_suffix(".tar"), id=""))


@pytest.fixture
def repository() -> Iterator[str]:
    _remove_all()
    yield REPOSITORY
    _remove_all()


def test_a_scratch_image_is_its_files_and_configuration(repository: str, tmp_path: Path) -> None:
    image = _scratch(repository, tmp_path, "one")
    try:
        assert image.name == f"localhost/{repository}:{image.tag}"
        with tarfile.open(image.archive) as archive:
            (manifest,) = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
            assert manifest["RepoTags"] == [image.name]  # the name `ctr images import` gives it
            (layer,) = manifest["Layers"]
            with tarfile.open(fileobj=archive.extractfile(layer)) as files:
                hello = files.getmember("hello")
                assert hello.mode & 0o777 == 0o755 and files.extractfile(hello).read() == b"one"  # type: ignore[union-attr]
        config = image_config(image)
        assert (config["Entrypoint"], config["Cmd"]) == (["/hello"], ["world"])

        assert _scratch(repository, tmp_path / "again", "one") == image  # same content: the cached image
        other = _scratch(repository, tmp_path, "two")
        assert other.tag != image.tag and other.id != image.id
        _remove(other)
    finally:
        _remove(image)


def test_an_image_lost_from_the_storage_is_loaded_from_its_archive(repository: str, tmp_path: Path) -> None:
    image = _scratch(repository, tmp_path, "kept")
    try:
        with images.storage_lock.held():
            images.buildah("rmi", "--force", image.name)
            assert not images.in_storage(image.name)
        images.load(image)
        assert images.in_storage(image.name)
        assert image_config(image)["Entrypoint"] == ["/hello"]
    finally:
        _remove(image)


def test_images_unused_for_days_are_pruned_by_the_next_build(repository: str, tmp_path: Path) -> None:
    old, recent = _scratch(repository, tmp_path, "old"), _scratch(repository, tmp_path, "recent")
    long_ago = time.time() - images.UNUSED_FOR - 60
    os.utime(old.archive.with_suffix(".json"), (long_ago, long_ago))
    newest = _scratch(repository, tmp_path, "newest")
    try:
        assert not old.archive.exists() and not images.in_storage(old.name)
        assert recent.archive.exists() and images.in_storage(recent.name)
    finally:
        for image in (old, recent, newest):
            _remove(image)


def test_a_killed_builds_working_container_is_removed_by_the_next_build() -> None:
    # what a build killed between `buildah from` and its commit leaves (it never held the lock again)
    leftover = images.buildah("from", "--quiet", "scratch").strip()
    try:
        assert leftover in images.buildah("containers", "--format", "{{.ContainerName}}").split()
        with images.storage_lock.held():
            assert images.buildah("containers", "--quiet").strip() == ""
    finally:
        with contextlib.suppress(images.BuildError):
            images.buildah("rm", leftover)


def test_a_killed_base_builds_scratch_folder_and_its_mounts_are_removed_by_the_next_build() -> None:
    # what a killed mmdebstrap leaves: its chroot in a scratch folder, with a mount still in it
    chroot = images.images_root() / f"{images.SCRATCH_PREFIX}killed" / "chroot" / "proc"
    chroot.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leftover", str(chroot)], check=True)
    try:
        with images.storage_lock.held():
            pass
        assert not chroot.parent.parent.exists()
        assert str(chroot) not in Path("/proc/self/mountinfo").read_text()
    finally:
        subprocess.run(["umount", "--lazy", str(chroot)], capture_output=True)
        shutil.rmtree(chroot.parent.parent, ignore_errors=True)
