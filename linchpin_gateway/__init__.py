"""Linchpin Mobile Gateway: the internet-facing blind relay."""
