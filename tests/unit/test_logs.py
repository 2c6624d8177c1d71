"""What `aspire serve` prints (cluster/logs.py): Aspire's lines on the terminal, other libraries'
lines in a file, errors from anyone on the terminal, JSON lines with the servable's fields, and
the manager's records followed in order across a manager restart."""

import io
import json
import logging

import pytest

from cluster.logs import CliLogging, EventFollower, EventLog, servable_fields


@pytest.fixture
def cli(tmp_path):
    """CliLogging writing its terminal to a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("aspire").level)

    def make(level="INFO", log_format="text"):
        logs = CliLogging(level, log_format)
        logs.terminal.setStream(buffer)
        logs.setup()
        return logs

    buffer = io.StringIO()
    make.buffer = buffer
    yield make
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.getLogger("aspire").setLevel(saved[2])


def test_the_terminal_shows_aspires_lines_and_errors_and_the_file_the_rest(cli, tmp_path):
    logs = cli()
    logging.getLogger("ray").warning("Token authentication is enabled")  # before the session
    logging.getLogger("aspire").info("Exporting HTTP/REST API at:0.0.0.0:8501 ...")
    logs.session_started(str(tmp_path))
    logging.getLogger("ray.serve").info("Started Serve")
    logging.getLogger("ray").error("the GCS went away")
    shown = cli.buffer.getvalue()
    assert "Exporting HTTP/REST API" in shown and "the GCS went away" in shown
    assert "Token authentication" not in shown and "Started Serve" not in shown
    assert "\x1b[" not in shown  # no colour codes
    kept = (tmp_path / "aspire-cli.log").read_text()
    assert "Token authentication is enabled" in kept and "Started Serve" in kept
    assert "Exporting HTTP/REST API" not in kept


def test_log_level_hides_aspires_lines_below_it(cli):
    cli("WARNING")
    logging.getLogger("aspire.manager").info("Loading servable: {name: m version: 1}")
    logging.getLogger("aspire.manager").warning("model m has no version loaded")
    shown = cli.buffer.getvalue()
    assert "Loading servable" not in shown and "no version loaded" in shown


def test_json_lines_carry_the_servables_fields(cli):
    cli(log_format="json")
    logging.getLogger("aspire.manager").info(
        "Successfully loaded servable version {name: m version: 3} in 4.20 s",
        extra=servable_fields("m", 3, "loaded", 4.2),
    )
    logging.getLogger("aspire").info("Ready 8.0 s after start")
    loaded, ready = (json.loads(line) for line in cli.buffer.getvalue().splitlines())
    assert loaded["message"].startswith("Successfully loaded servable version {name: m version: 3}")
    assert (loaded["model"], loaded["version"], loaded["event"], loaded["duration_s"]) == (
        "m",
        3,
        "loaded",
        4.2,
    )
    assert loaded["level"] == "INFO" and loaded["logger"] == "aspire.manager"
    assert loaded["time"].endswith("+00:00")
    assert "model" not in ready and ready["message"] == "Ready 8.0 s after start"


def test_the_managers_records_reach_the_terminal_as_they_were_logged(cli):
    logs = cli(log_format="json")
    events = EventLog()
    manager_log = logging.getLogger("aspire.test_events")
    manager_log.addHandler(events)
    manager_log.setLevel(logging.INFO)
    manager_log.propagate = False
    try:
        manager_log.info("one", extra=servable_fields("m", 1, "loading"))
        manager_log.warning("two")
        follower = EventFollower(events.since, logs.show)
        follower.drain()
        shown = [json.loads(line) for line in cli.buffer.getvalue().splitlines()]
        assert [(d["message"], d["level"]) for d in shown] == [("one", "INFO"), ("two", "WARNING")]
        assert shown[0]["event"] == "loading"
    finally:
        manager_log.removeHandler(events)


def test_a_follower_starts_over_when_a_restarted_manager_numbers_from_zero():
    shown = []
    old, new = EventLog(), EventLog()
    for log, text in ((old, "before"), (new, "after")):
        log.handle(logging.LogRecord("aspire.manager", logging.INFO, "", 0, text, None, None))
    source = [old]
    follower = EventFollower(lambda seq, t: source[0].since(seq, t), shown.append)
    follower._poll(0.0)
    old.handle(logging.LogRecord("aspire.manager", logging.INFO, "", 0, "more", None, None))
    follower._poll(0.0)
    source[0] = new  # restarted: its numbers start at 1 again, below the follower's
    follower._poll(0.0)
    assert [d["message"] for d in shown] == ["before", "more", "after"]
