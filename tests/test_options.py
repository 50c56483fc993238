"""Option checks that must refuse bad input before anything runs."""

import pytest
from twisted.python import usage

from linchpin_connector import tap as connector_tap
from linchpin_common.gateway_client import InsecureURL, check_gateway_url
from linchpin_gateway import tap as gateway_tap


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
                                  ["--rest-limit", "-1"]])
def test_gateway_refuses(argv):
    with pytest.raises(usage.UsageError):
        gateway_tap.Options().parseOptions(argv)


def test_gateway_store_url_from_environment(monkeypatch):
    monkeypatch.setenv("LMGATEWAY_STORE", "postgresql://u:pw@127.0.0.1:5432/lm")
    options = gateway_tap.Options()
    options.parseOptions([])
    assert options["store"] == "postgresql://u:pw@127.0.0.1:5432/lm"


def test_gateway_defaults():
    options = gateway_tap.Options()
    options.parseOptions([])
    assert options["listen"] == ["tcp:8080:backlog=1024"] and options["data-dir"] == "./var/lmgateway"


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
