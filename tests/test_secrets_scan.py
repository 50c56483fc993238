"""The scanner behind every "no secret on disk / in the log" assertion finds
a secret in the forms a careless write would leave."""

import base64
import binascii

from linchpin_common.contract.ids import b64u_encode
from tests.secrets_scan import find_secrets, secrets_in_text

SECRET = b64u_encode(bytes(range(7, 39)))  # a 32-byte secret as the parties write it


def test_a_secret_is_found_on_disk_in_any_of_its_forms(tmp_path):
    raw = base64.urlsafe_b64decode(SECRET + "=")
    forms = {"text": SECRET.encode(), "hex": binascii.hexlify(raw), "bytes": raw,
             "utf16": SECRET.encode("utf-16-le")}
    for name, data in forms.items():
        (tmp_path / "deep" / name).mkdir(parents=True)
        (tmp_path / "deep" / name / "file").write_bytes(b"..." + data + b"...")
    hits = find_secrets(tmp_path, [SECRET, "not-written-anywhere"])
    assert sorted(path.split("/")[-2] for path, secret in hits if secret == SECRET) == sorted(forms)
    assert all(secret == SECRET for _, secret in hits)


def test_a_secret_is_found_in_a_log_in_any_of_its_forms():
    assert secrets_in_text(f"logged {SECRET} by mistake", [SECRET, "other-secret-x"]) == [SECRET]
    assert secrets_in_text(f"hex {binascii.hexlify(SECRET.encode()).decode()}", [SECRET]) == [SECRET]
    assert secrets_in_text(f"b64 {base64.b64encode(SECRET.encode()).decode()}", [SECRET]) == [SECRET]
    assert secrets_in_text("nothing here", [SECRET]) == []
