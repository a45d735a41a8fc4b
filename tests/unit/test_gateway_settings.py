"""The gateway's command line: flags, their $CLUSTERPOOL_GATEWAY_<FLAG> twins, clear errors."""

from __future__ import annotations

import pytest

from clusterpool.gateway.settings import parse


def test_flags_and_defaults():
    s = parse(["--routing-file", "a.json", "--routing-file", "b.json", "--listen", "127.0.0.1:9000", "--retries", "3"])
    assert s.routing_files == ("a.json", "b.json")
    assert s.listen == ("127.0.0.1", 9000) and s.admin_listen == ("0.0.0.0", 9091)
    assert s.retries == 3 and s.access_log and not s.log_bodies


def test_every_flag_has_an_environment_twin(monkeypatch):
    monkeypatch.setenv("CLUSTERPOOL_GATEWAY_NAMESPACE", "team-a team-b")
    monkeypatch.setenv("CLUSTERPOOL_GATEWAY_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("CLUSTERPOOL_GATEWAY_FIRST_BYTE_TIMEOUT", "1.5")
    monkeypatch.setenv("CLUSTERPOOL_GATEWAY_ACCESS_LOG", "false")
    monkeypatch.setenv("CLUSTERPOOL_GATEWAY_API_KEYS_SECRET", "ops/keys")
    s = parse([])
    assert s.namespaces == ("team-a", "team-b")
    assert s.limits.max_connections == 7 and s.timeouts.first_byte == 1.5
    assert not s.access_log and s.api_keys_secret == ("ops", "keys")
    assert parse(["--max-connections", "9"]).limits.max_connections == 9  # a flag beats its variable


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "nothing to serve"),
        (["--routing-file", "a", "--listen", "8080"], "HOST:PORT"),
        (["--routing-file", "a", "--api-keys-secret", "keys"], "NAMESPACE/NAME"),
    ],
)
def test_bad_command_lines_say_what_to_write(argv, says, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert says in capsys.readouterr().err
