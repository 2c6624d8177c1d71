"""What a version directory may hold before the loader reads it (deployments/replica/loader.py): no
link out of the model's base path, and a SavedModel rather than Keras files. Real directories, links
and files; the atime of the files outside shows they are never read."""

import os
import shutil

import numpy as np
import pytest

from core.errors import AspireError
from deployments.replica.loader import SavedModelLoader, check_contained

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
HALF_PLUS_TWO = os.path.join(DATA, "saved_model_half_plus_two_cpu", "00000123")


@pytest.fixture
def repo(tmp_path):
    """tmp/model (base path, version 1 real) and tmp/outside (a SavedModel outside it)."""
    base, outside = tmp_path / "model", tmp_path / "outside"
    shutil.copytree(HALF_PLUS_TWO, base / "1")
    shutil.copytree(HALF_PLUS_TWO, outside)
    return base, outside


def mark_unread(path) -> float:
    """Set atime before mtime, so the next read moves it (relatime); returns the atime set."""
    st = os.stat(path)
    os.utime(path, (st.st_mtime - 1000, st.st_mtime))
    return os.stat(path).st_atime


def refusal(path) -> AspireError:
    """The error from each entry point that runs before a load; all three must agree."""
    errors = []
    for call in (
        lambda: SavedModelLoader(path).estimate_resources(),
        lambda: SavedModelLoader(path).validate(),
        lambda: check_contained(path),
    ):
        with pytest.raises(AspireError) as err:
            call()
        errors.append((err.value.code, err.value.message))
    assert len(set(errors)) == 1, errors
    return AspireError(errors[0][1], errors[0][0])


def test_a_version_linked_outside_the_base_path_is_refused_unread(repo):
    base, outside = repo
    os.symlink(outside, base / "2")
    pb = outside / "saved_model.pb"
    atime = mark_unread(pb)
    err = refusal(str(base / "2"))
    assert err.code == "PERMISSION_DENIED"
    assert err.message == f"Version directory {base}/2 resolves outside the model base path {base}"
    assert os.stat(pb).st_atime == atime, "a file outside the base path was read"
    open(pb, "rb").read(1)  # control: a read does move atime on this file system
    if os.stat(pb).st_atime == atime:
        pytest.skip("this file system does not update atime; the no-read check cannot fail")
    print(err.message)


def test_a_version_holding_a_link_outside_is_refused_and_named(repo):
    base, outside = repo
    shutil.copytree(HALF_PLUS_TWO, base / "3", ignore=shutil.ignore_patterns("variables"))
    os.symlink(outside / "variables", base / "3" / "variables")
    err = refusal(str(base / "3"))
    assert (err.code, err.message) == (
        "PERMISSION_DENIED",
        f"Version directory {base}/3 holds variables, which resolves outside "
        f"the model base path {base}",
    )
    os.remove(base / "3" / "variables")
    os.makedirs(base / "3" / "variables")
    os.symlink(
        outside / "variables" / "variables.index", base / "3" / "variables" / "variables.index"
    )
    assert "holds variables/variables.index, which" in refusal(str(base / "3")).message


def test_a_relative_link_climbing_out_is_refused(repo):
    base, _outside = repo
    os.symlink("../outside", base / "4")
    assert refusal(str(base / "4")).code == "PERMISSION_DENIED"


def test_links_that_stay_inside_the_base_path_load(repo, tmp_path):
    base, _outside = repo
    shutil.copytree(HALF_PLUS_TWO, base / ".staging-2")
    os.symlink(base / ".staging-2", base / "2")  # publishing by link inside the repository
    shutil.copytree(HALF_PLUS_TWO, base / "3", ignore=shutil.ignore_patterns("variables"))
    os.symlink("../1/variables", base / "3" / "variables")  # sharing another version's weights
    os.symlink(base, tmp_path / "linked")  # the base path itself reached through a link
    x = {"x": np.array([[1.0], [5.0]], np.float32)}
    for path in (base / "1", base / "2", base / "3", tmp_path / "linked" / "1"):
        loader = SavedModelLoader(str(path))
        assert loader.estimate_resources().ram_bytes > 0
        assert "serving_default" in loader.validate()
        loaded = loader.load()  # the weights read through the links: half_plus_two answers
        try:
            assert loaded.run("serving_default", x)["y"].tolist() == [[2.5], [4.5]], path
        finally:
            loaded.unload()


@pytest.mark.parametrize("target", [".", "..", "../../1", "../.."])
def test_a_link_back_to_a_directory_holding_it_is_refused(repo, target):
    base, _outside = repo
    os.symlink(target, base / "1" / "variables" / "loop")
    err = refusal(str(base / "1"))
    assert err.code == "PERMISSION_DENIED"
    assert err.message.endswith(", a link back to a directory that holds it"), err.message


def test_uris_are_not_checked_for_links():
    check_contained("gs://bucket/model/1")  # object stores have no links; nothing to resolve


@pytest.mark.parametrize("files", [["model.keras"], ["model.h5"], ["weights.hdf5", "model.keras"]])
def test_keras_files_without_a_saved_model_are_refused_with_the_reason(tmp_path, files):
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    for name in files:
        (version / name).write_bytes(b"PK\x03\x04 not opened")
    with pytest.raises(AspireError) as err:
        SavedModelLoader(str(version)).validate()
    assert err.value.code == "NOT_FOUND"
    assert err.value.message == (
        f"Version directory {version} holds Keras file(s) {', '.join(sorted(files))} and no "
        "SavedModel (saved_model.pb): Aspire serves SavedModels only and never deserialises "
        "Keras files. Export one with model.export(path)."
    )


def test_an_empty_version_keeps_tf_servings_message(tmp_path):
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    with pytest.raises(AspireError) as err:
        SavedModelLoader(str(version)).validate()
    assert err.value.message.startswith(
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {version}."
    )
