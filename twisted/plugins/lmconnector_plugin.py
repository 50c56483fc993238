from twisted.application.service import ServiceMaker

lmconnector = ServiceMaker(
    "Linchpin connector",
    "linchpin_connector.tap",
    "Inside the firewall: proxies paired devices to the intranet app through the gateway",
    "lmconnector",
)
