"""The command lines as people type them: the options of the whole command
(lmconnector's --data-dir, --ca-file, --proxy, --proxy-password-file;
lmdevice's --state, --ca-file, --proxy..., --timeout) go before the
subcommand or after it; after it, they win."""

import pytest

from linchpin_connector.cli import _parser as connector_parser
from linchpin_connector.device.cli import _parser as device_parser

CONNECTOR_COMMANDS = [["register", "--gateway", "https://gw.example"], ["device", "add", "alice"], ["device", "list"],
                      ["device", "revoke", "0" * 32]]
DEVICE_COMMANDS = [["pair", "-"], ["request", "/notes"], ["serve"]]


@pytest.mark.parametrize("command", CONNECTOR_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("option, attr, value", [("--data-dir", "data_dir", "var/c2"), ("--ca-file", "ca_file", "ca.pem"),
                                                 ("--proxy", "proxy", "http://proxy.corp:3128"),
                                                 ("--proxy-password-file", "proxy_password_file", "pw")])
def test_lmconnector_global_options_before_or_after_the_subcommand(command, option, attr, value):
    """Before: `lmconnector register --gateway URL --proxy URL` was refused."""
    after = connector_parser().parse_args(command + [option, value])
    before = connector_parser().parse_args([option, value] + command)
    assert getattr(after, attr) == getattr(before, attr) == value


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("option, attr, value, parsed", [("--state", "state", "s.json", "s.json"),
                                                         ("--ca-file", "ca_file", "ca.pem", "ca.pem"),
                                                         ("--proxy", "proxy", "''", "''"),
                                                         ("--timeout", "timeout", "5", 5.0)])
def test_lmdevice_global_options_before_or_after_the_subcommand(command, option, attr, value, parsed):
    after = device_parser().parse_args(command + [option, value])
    before = device_parser().parse_args([option, value] + command)
    assert getattr(after, attr) == getattr(before, attr) == parsed


def test_defaults_hold_and_the_value_after_the_subcommand_wins():
    args = connector_parser().parse_args(["device", "list"])
    assert args.data_dir == "./var/lmconnector" and args.proxy is None
    args = connector_parser().parse_args(["--data-dir", "a", "device", "list", "--data-dir", "b"])
    assert args.data_dir == "b"
    args = device_parser().parse_args(["--state", "a.json", "request", "/", "--state", "b.json"])
    assert args.state == "b.json" and args.timeout == 60.0
