"""Option checks that must refuse bad input before anything runs."""

import pytest
from twisted.python import usage

from linchpin_connector import tap as connector_tap
from linchpin_common.gateway_client import InsecureURL, check_gateway_url
from linchpin_gateway import tap as gateway_tap
from linchpin_gateway.config import GatewayConfig


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.0.0.2", "http://[::1]:9", "http://localhost/x/",
                                 "https://gw.example.com"])
def test_allowed_gateway_urls(url):
    assert check_gateway_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://127.attacker.example/x", "http://localhost.example", "http://10.0.0.1",
                                 "http://gw.example.com", "ftp://127.0.0.1", "gw.example.com"])
def test_plain_http_to_anything_but_loopback_refused(url):
    with pytest.raises(InsecureURL):
        check_gateway_url(url)
    if url.startswith("http://"):
        assert check_gateway_url(url, allow_insecure=True)


@pytest.mark.parametrize("argv", [["--store", "mysql://x"], ["--store", "sqlite:/tmp/x"], ["--bus", "amqp://x"],
                                  ["--max-message-size", "1000"], ["--pbkdf2-iterations", "1000"],
                                  ["--rest-limit", "-1"], ["--public-url", "gw.example.com"], ["--setup-key-ttl", "0"]])
def test_gateway_refuses(argv):
    with pytest.raises(usage.UsageError):
        gateway_tap.Options().parseOptions(argv)


def test_gateway_store_url_from_environment(monkeypatch):
    monkeypatch.setenv("LMGATEWAY_STORE", "postgresql://u:pw@127.0.0.1:5432/lm")
    options = gateway_tap.Options()
    options.parseOptions([])
    assert options.config.store == "postgresql://u:pw@127.0.0.1:5432/lm"
    assert "pw" not in repr(options.config)


def test_gateway_defaults():
    options = gateway_tap.Options()
    options.parseOptions([])
    config = options.config
    assert config.listen == ("tcp:8080:backlog=1024",) and config.data_dir == "./var/lmgateway"
    assert config == GatewayConfig()  # every default comes from the one config object
    assert (config.max_message_size, config.setup_key_ttl, config.pbkdf2_iterations) == (1048576, 86400, 100_000)


def test_gateway_options_feed_the_config():
    options = gateway_tap.Options()
    options.parseOptions(["--listen", "tcp:0", "--listen", "tcp:1", "--max-message-size", "600000",
                          "--public-url", "https://gw.example.com/", "--login-limit", "0"])
    config = options.config
    assert config.listen == ("tcp:0", "tcp:1") and config.max_message_size == 600000
    assert config.public_base == "https://gw.example.com" and config.login_limit == 0
    assert config.per_minute(config.login_limit) is None and config.per_minute(30) == (30, 30.0)


def test_registration_token_from_file_or_environment(tmp_path, monkeypatch):
    """Kept out of ps: a file (first line) or LMGATEWAY_REGISTRATION_TOKEN."""
    token_file = tmp_path / "token"
    token_file.write_text("from-file\nignored\n")
    options = gateway_tap.Options()
    options.parseOptions(["--registration-token-file", str(token_file)])
    assert options.config.registration_token == "from-file"
    assert "from-file" not in repr(options.config)

    monkeypatch.setenv("LMGATEWAY_REGISTRATION_TOKEN", "from-env")
    options = gateway_tap.Options()
    options.parseOptions([])
    assert options.config.registration_token == "from-env"
    options = gateway_tap.Options()
    options.parseOptions(["--registration-token", "explicit"])
    assert options.config.registration_token == "explicit"

    for argv in (["--registration-token-file", str(tmp_path / "missing")],
                 ["--registration-token", "a", "--registration-token-file", str(token_file)]):
        with pytest.raises(usage.UsageError):
            gateway_tap.Options().parseOptions(argv)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(usage.UsageError, match="empty"):
        gateway_tap.Options().parseOptions(["--registration-token-file", str(tmp_path / "empty")])


@pytest.mark.parametrize("argv", [[], ["--backend", "intranet"], ["--backend", "http://x", "--user-header", "X User"],
                                  ["--backend", "http://x", "--user-header", "X-User:alice"],
                                  ["--backend", "http://x", "--allow-path", "app"],
                                  ["--backend", "http://x", "--keep-alive", "0"]])
def test_connector_refuses(argv):
    with pytest.raises(usage.UsageError):
        connector_tap.Options().parseOptions(argv)


def test_connector_defaults():
    options = connector_tap.Options()
    options.parseOptions(["--backend", "http://intranet.local:8090"])
    assert options["allow-path"] == ["/"] and options["user-header"] == "X-Forwarded-User"
    assert options["data-dir"] == "./var/lmconnector"
