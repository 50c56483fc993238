"""Look for secrets, in every encoding we can think of, in files on disk and in logs."""

import base64
import binascii
import os


def encodings(secret: str) -> list[bytes]:
    raw = secret.encode()
    forms = {raw, raw.upper(), raw.lower(), binascii.hexlify(raw), base64.b64encode(raw).rstrip(b"="),
             secret.encode("utf-16-le"), secret.encode("utf-16-be")}
    try:  # the secret's own bytes, if it is base64url text
        decoded = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        forms |= {decoded, binascii.hexlify(decoded), base64.b64encode(decoded).rstrip(b"=")}
    except (binascii.Error, ValueError):
        pass
    return [f for f in forms if len(f) >= 8]


def find_secrets(root, secrets) -> list[tuple[str, str]]:
    """(path, secret) for every file under ``root`` holding any form of a secret."""
    hits = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            for secret in secrets:
                if any(form in data for form in encodings(secret)):
                    hits.append((path, secret))
    return hits


def secrets_in_text(text: str, secrets) -> list[str]:
    """The secrets of which any form appears in ``text`` (a process's log)."""
    data = text.encode("utf-8", "surrogateescape")
    return [secret for secret in secrets if any(form in data for form in encodings(secret))]
