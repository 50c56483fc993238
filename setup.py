from setuptools import setup

setup(
    name="linchpin-mobile-gateway",
    version="0.1.0",
    description="Reach an intranet web app from a phone through a blind MQTT-over-WebSocket relay",
    python_requires=">=3.11",
    packages=["linchpin_common", "linchpin_common.contract", "linchpin_gateway", "linchpin_connector",
              "linchpin_connector.device", "linchpin_connector.web", "twisted.plugins"],
    package_data={
        "linchpin_common": ["py.typed"],
        "linchpin_gateway": ["db-schemas/*.sql", "py.typed"],
        "linchpin_connector": ["db-schemas/*.sql", "py.typed"],
        "linchpin_connector.web": ["static/*.css", "static/*.js"],
        "twisted": ["plugins/lmgateway_plugin.py", "plugins/lmconnector_plugin.py"],
    },
    install_requires=[
        "twisted[tls]>=23.10.0",
        "autobahn>=23.6.2",
        "service-identity>=21.1.0",
        "pyopenssl>=23.2.0",
        "cryptography>=41.0.0",
        "treq>=23.11.0",
        "segno>=1.5.3",
        "prometheus_client>=0.17.0",
        "zope.interface>=6.0",
        "automat>=22.10.0",
        "psycopg[binary]>=3.1.18",
        "psycopg_pool>=3.2.0",
        "txredisapi>=1.4.10",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-twisted>=1.14",
            "hypothesis>=6.90",
            "paho-mqtt>=2.0",
            "playwright>=1.40",
            "build>=1.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "lmconnector = linchpin_connector.cli:main",
            "lmdevice = linchpin_connector.device.cli:main",
        ],
    },
)
