"""File-system source polling rules on a real temporary directory tree."""

import logging

from cluster.source import FileSystemSource, poll_model
from config.model_config import ModelSource
from policies.aspired import All, Latest, Specific


def make_versions(base, *names):
    for name in names:
        (base / name).mkdir(parents=True)


def test_numeric_directories_are_versions_and_latest_one_is_aspired(tmp_path):
    make_versions(tmp_path, "1", "00000123", "v2", "1.5", "2.denied")
    (tmp_path / "7").write_text("a file is not a version")
    assert poll_model(ModelSource("m", str(tmp_path))) == {123: str(tmp_path / "00000123")}


def test_latest_n_all_and_specific_policies(tmp_path):
    make_versions(tmp_path, "1", "2", "3")
    assert set(poll_model(ModelSource("m", str(tmp_path), Latest(2)))) == {2, 3}
    assert set(poll_model(ModelSource("m", str(tmp_path), All()))) == {1, 2, 3}
    assert set(poll_model(ModelSource("m", str(tmp_path), Specific((1, 9))))) == {1}


def test_no_versions_yields_empty_list_with_warning(tmp_path, caplog):
    make_versions(tmp_path, "latest")
    with caplog.at_level(logging.WARNING):
        assert poll_model(ModelSource("m", str(tmp_path))) == {}
    assert "No versions of servable m found under base path" in caplog.text


def test_missing_base_path_emits_nothing_so_serving_versions_stay(tmp_path, caplog):
    calls = []
    source = FileSystemSource(
        [ModelSource("gone", str(tmp_path / "missing")), ModelSource("here", str(tmp_path))],
        0,
        lambda name, versions: calls.append((name, versions)),
    )
    make_versions(tmp_path, "4")
    with caplog.at_level(logging.ERROR):
        source.poll_once()
    assert calls == [("here", {4: str(tmp_path / "4")})]
    assert "Could not find base path" in caplog.text


def test_removed_version_directory_leaves_the_aspired_list(tmp_path):
    calls = []
    source = FileSystemSource(
        [ModelSource("m", str(tmp_path), All())],
        0,
        lambda name, versions: calls.append(sorted(versions)),
    )
    make_versions(tmp_path, "1", "2")
    source.poll_once()
    (tmp_path / "2").rmdir()
    source.poll_once()
    assert calls == [[1, 2], [1]]


def test_model_removed_from_list_gets_empty_aspired_list(tmp_path):
    calls = []
    source = FileSystemSource(
        [ModelSource("a", str(tmp_path)), ModelSource("b", str(tmp_path))],
        0,
        lambda name, versions: calls.append((name, versions)),
    )
    source.set_models([ModelSource("a", str(tmp_path))])
    assert calls == [("b", {})]


def test_poll_once_mode_polls_exactly_once(tmp_path):
    calls = []
    make_versions(tmp_path, "1")
    source = FileSystemSource(
        [ModelSource("m", str(tmp_path))], 0, lambda name, versions: calls.append(name)
    )
    source.start()
    source._thread.join(5)
    assert calls == ["m"] and not source._thread.is_alive()


def test_a_poll_in_progress_cannot_aspire_a_model_again_after_its_removal(tmp_path):
    import threading

    for name in ("a", "m"):
        (tmp_path / name / "1").mkdir(parents=True)
    calls, polling, release = [], threading.Event(), threading.Event()

    def callback(name, aspired):
        calls.append((name, aspired))
        if name == "a":  # the poll has read the list with "m" in it: hold it before it emits "m"
            polling.set()
            release.wait(5)

    source = FileSystemSource(
        [ModelSource(n, str(tmp_path / n)) for n in ("a", "m")], 1.0, callback
    )
    poller = threading.Thread(target=source.poll_once)
    poller.start()
    assert polling.wait(5)
    remover = threading.Thread(
        target=source.set_models, args=([ModelSource("a", str(tmp_path / "a"))],)
    )
    remover.start()
    remover.join(0.2)
    release.set()
    poller.join(5)
    remover.join(5)
    assert [c for c in calls if c[0] == "m"][-1] == ("m", {})  # the removal is the last word


def test_a_url_base_path_is_listed_by_the_injected_remote_lister():
    asked = []

    def remote(path: str) -> list[str]:
        asked.append(path)
        return ["1", "2", "not-a-version"]

    model = ModelSource("m", "gs://bucket/m")
    assert poll_model(model, remote) == {2: "gs://bucket/m/2"}
    assert asked == ["gs://bucket/m"]


def test_a_url_base_path_that_cannot_be_listed_is_skipped_and_logged(caplog):
    def failing(path: str) -> list[str]:
        raise OSError(f"listing {path} failed: no credentials")

    with caplog.at_level(logging.ERROR):
        assert poll_model(ModelSource("m", "s3://bucket/m"), failing) is None
        assert poll_model(ModelSource("n", "s3://bucket/n")) is None  # no lister at all
    assert "no credentials" in caplog.text
    assert "no file system for URL base paths" in caplog.text


def test_the_replica_side_lister_lists_with_tensorflows_file_systems(tmp_path):
    from deployments.replica.remote_files import list_children

    make_versions(tmp_path, "1", "2")
    children, why = list_children(str(tmp_path))
    assert (sorted(children or []), why) == (["1", "2"], "")
    assert list_children(str(tmp_path / "missing")) == (None, f"{tmp_path / 'missing'} not found")
