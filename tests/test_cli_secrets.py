"""Secrets of ``lmconnector``: the QR code of ``device add --qr-png/--qr-svg``
holds the pairing secret, so its file is always a new 0600 file, never one
planted in advance; the registration token can stay out of ``ps``."""

from __future__ import annotations

import os
import stat

import pytest
import segno

from linchpin_connector.cli import CommandError, _write_qr

SECRET_URI = "linchpin-mobile://pair?v=1&secret=not-for-anyone-else"


@pytest.mark.parametrize("kind", ["png", "svg"])
def test_a_planted_symlink_is_replaced_not_followed(tmp_path, kind):
    victim = tmp_path / "world-readable-elsewhere"
    victim.write_bytes(b"")
    victim.chmod(0o644)
    target = tmp_path / f"qr.{kind}"
    target.symlink_to(victim)
    _write_qr(str(target), segno.make(SECRET_URI), kind, "d" * 32)
    assert victim.read_bytes() == b""  # nothing went through the link
    assert not target.is_symlink() and stat.S_IMODE(os.lstat(target).st_mode) == 0o600
    assert target.stat().st_size > 0


@pytest.mark.parametrize("kind", ["png", "svg"])
def test_an_existing_world_readable_file_does_not_keep_its_mode(tmp_path, kind):
    target = tmp_path / f"qr.{kind}"
    target.write_bytes(b"old")
    target.chmod(0o644)
    _write_qr(str(target), segno.make(SECRET_URI), kind, "d" * 32)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and target.read_bytes() != b"old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left behind


def test_an_unwritable_place_says_what_to_do(tmp_path):
    with pytest.raises(CommandError, match=r"cannot write .*lmconnector device revoke d{32}"):
        _write_qr(str(tmp_path / "missing-folder" / "qr.png"), segno.make(SECRET_URI), "png", "d" * 32)


def test_registration_token_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from linchpin_connector.cli import TOKEN_ENV, _registration_token

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    args = SimpleNamespace(registration_token=None, registration_token_file=str(token_file))
    assert _registration_token(args) == "from-file"
    assert _registration_token(SimpleNamespace(registration_token=None, registration_token_file=None)) == "from-env"
    assert _registration_token(SimpleNamespace(registration_token="opt", registration_token_file=None)) == "opt"
    token_file.write_text("\n")
    with pytest.raises(CommandError, match="is empty"):
        _registration_token(args)
