"""What a paired device keeps: a JSON file, mode 0600, replaced atomically."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from linchpin_common.contract import e2e
from linchpin_common.files import write_private_file

from .errors import DeviceError

DEFAULT_STATE = "./var/lmdevice.json"


@dataclass
class DeviceState:
    """What a paired device keeps (a JSON file, mode 0600, replaced atomically)."""

    path: str
    gateway_url: str
    device_id: str
    device_password: str
    connector_key: str
    setup_secret: str | None = None
    device_secret: str | None = None
    insecure: bool = False
    ca_file: str | None = None  # private CA given at pairing, used from then on

    @classmethod
    def load(cls, path: str) -> DeviceState:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DeviceError(f"no device state at {path}: run 'lmdevice pair URI' first")
        except ValueError:
            raise DeviceError(f"device state {path} is not valid JSON")
        data.pop("path", None)
        try:
            return cls(path=path, **data)
        except TypeError as e:
            raise DeviceError(f"device state {path} is incomplete: {e}")

    def save(self) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        data = asdict(self)
        del data["path"]
        write_private_file(self.path, json.dumps(data, indent=1).encode("utf-8"))

    def long_term_key(self) -> tuple[int, bytes]:
        if self.device_secret:
            return e2e.KEY_DEVICE, e2e.b64u_decode(self.device_secret)
        if self.setup_secret:
            return e2e.KEY_SETUP, e2e.b64u_decode(self.setup_secret)
        raise DeviceError("device state holds no key; pair again")
