"""The connector daemon's settings in one place (linchpin_connector.config):
the options and the parts built from them apply the same rules and defaults."""

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from linchpin_connector import tap
from linchpin_connector.config import DEFAULTS, USER_HEADER, ConnectorConfig
from linchpin_connector.proxy import RequestProxy


@pytest.mark.parametrize("value, ok", [("wiki.example.com", True), ("wiki.example.com:8443", True),
                                       ("[2001:db8::1]:443", True), ("192.0.2.1", True), ("bad host", False),
                                       ("wiki.example.com/x", False), ("wiki:80:81", False), ("", False),
                                       ("[::1", False), ("wiki\\x", False), ("wiki\tx", False)])
def test_public_host_has_one_rule_for_the_option_and_the_proxy(value, ok):
    """Before: two rules, the option's and the proxy's; both took '[::1' and
    'wiki:80:81', and the proxy alone took a tab."""
    options = tap.Options()
    argv = ["--backend", "http://intranet.local", "--public-host", value]
    if ok:
        options.parseOptions(argv)
        assert options.config.public_host == value
        RequestProxy(http_client=None, backend_url="http://intranet.local", user="alice", send=lambda m: None,
                     clock=Clock(), public_host=value)
    else:
        with pytest.raises(usage.UsageError, match="--public-host"):
            options.parseOptions(argv)
        with pytest.raises(ValueError, match="--public-host"):
            RequestProxy(http_client=None, backend_url="http://intranet.local", user="alice", send=lambda m: None,
                     clock=Clock(), public_host=value)


def test_the_options_default_to_the_config_defaults():
    options = tap.Options()
    options.parseOptions(["--backend", "http://intranet.local"])
    config = options.config
    assert config == ConnectorConfig(backend="http://intranet.local")
    assert (config.user_header, config.web_user_header) == (USER_HEADER, USER_HEADER) == (
        DEFAULTS.user_header, "X-Forwarded-User")
    assert config.allow_paths == ("/",) and config.keep_alive == 30 and config.user_in_flight == 32


@pytest.mark.parametrize("argv, message", [
    ([], "--backend URL is required"), (["--backend", "ftp://x"], "http:// or https://"),
    (["--backend", "http://x", "--keep-alive", "0"], "--keep-alive"),
    (["--backend", "http://x", "--allow-path", "notes"], "--allow-path"),
    (["--backend", "http://x", "--user-header", "X User"], "--user-header"),
])
def test_bad_settings_are_one_line(argv, message):
    with pytest.raises(usage.UsageError, match=message):
        tap.Options().parseOptions(argv)
