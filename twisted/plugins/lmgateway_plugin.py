from twisted.application.service import ServiceMaker

lmgateway = ServiceMaker(
    "Linchpin Mobile Gateway",
    "linchpin_gateway.tap",
    "Internet-facing relay: REST credentials API and MQTT over WebSocket",
    "lmgateway",
)
