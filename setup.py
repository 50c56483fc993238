import os
import re
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent
# The relay's hot path, compiled by Cython when it is installed (it is in
# requirements.lock and pyproject.toml's build requirements) and a C compiler
# works: the WebSocket frame reader and the MQTT stream parser are the same
# .py modules, typed by their .pxd files, and _wsmask.pyx is the XOR of
# unmasking in C. Any of them that cannot be built is left out with a
# warning (optional=True) and its pure-Python module runs instead.
# LINCHPIN_PURE_PYTHON=1 builds none.
COMPILED = {
    "linchpin_common._wsmask": "linchpin_common/_wsmask.pyx",
    "linchpin_common.wsframes": "linchpin_common/wsframes.py",
    "linchpin_common.contract.wire": "linchpin_common/contract/wire.py",
}


def compiled_hot_path() -> list:
    if os.environ.get("LINCHPIN_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("setup.py: Cython is not installed: the hot path stays pure Python", file=sys.stderr)
        return []
    extensions = [Extension(name, [source], optional=True) for name, source in COMPILED.items()]
    try:
        return cythonize(extensions, quiet=True,
                         compiler_directives={"language_level": 3, "annotation_typing": False})
    except Exception as error:  # a Cython that cannot compile them: still installable
        print(f"setup.py: Cython failed ({error}): the hot path stays pure Python", file=sys.stderr)
        return []

VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "linchpin_common" / "__init__.py").read_text(),
                    re.MULTILINE).group(1)

setup(
    name="linchpin-mobile-gateway",
    version=VERSION,
    description="Reach an intranet web app from a phone through a blind MQTT-over-WebSocket relay",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    keywords=["mqtt", "websocket", "twisted", "relay", "intranet", "mobile", "end-to-end encryption"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: No Input/Output (Daemon)",
        "Framework :: Twisted",
        "Intended Audience :: System Administrators",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Internet :: Proxy Servers",
        "Topic :: Internet :: WWW/HTTP",
        "Topic :: Security :: Cryptography",
        "Topic :: System :: Networking",
        "Typing :: Typed",
    ],
    python_requires=">=3.11",
    packages=find_packages(include=["linchpin_common", "linchpin_common.*", "linchpin_gateway",
                                    "linchpin_gateway.*", "linchpin_connector", "linchpin_connector.*"])
    + ["twisted.plugins"],
    package_data={
        "linchpin_common": ["py.typed"],
        "linchpin_gateway": ["db-schemas/*.sql", "py.typed"],
        "linchpin_connector": ["db-schemas/*.sql", "py.typed"],
        "linchpin_connector.web": ["static/*.css", "static/*.js", "static/app/*.js", "static/app/*.css",
                                   "static/app/*.html", "static/app/*.png", "static/app/*.webmanifest"],
        "twisted": ["plugins/lmgateway_plugin.py", "plugins/lmconnector_plugin.py"],
    },
    install_requires=[
        "twisted[tls]>=23.10.0",
        "autobahn>=23.6.2,<27",  # linchpin_common/wsframes.py uses its internals (tests/test_autobahn_canary.py)
        "service-identity>=21.1.0",
        "pyopenssl>=23.2.0",
        "cryptography>=41.0.0",
        "treq>=23.11.0",
        "segno>=1.5.3",
        "prometheus_client>=0.17.0",
        "zope.interface>=6.0",
        "psycopg[binary]>=3.1.18",
        "psycopg_pool>=3.2.0",
        "txredisapi>=1.4.10",
        "hiredis>=2.1",  # txredisapi's C reply reader, and packs the bus's PUBLISHes
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.90",
            "paho-mqtt>=2.0",
            "playwright>=1.40",
            "zxing-cpp>=2.2",  # reads the pairing page's QR code from a browser screenshot
            "build>=1.0",
            "wheel>=0.41",  # python -m build --no-isolation (the packaging test) builds the wheel offline
            "packaging>=23.0",  # the lock's pins checked against setup.py's specifiers (tests/test_tooling.py)
        ],
    },
    ext_modules=compiled_hot_path(),
    entry_points={
        "console_scripts": [
            "lmconnector = linchpin_connector.cli:main",
            "lmdevice = linchpin_connector.device.cli:main",
        ],
    },
)
