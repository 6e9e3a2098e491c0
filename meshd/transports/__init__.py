"""Transports: adapters that turn radios and sockets into authenticated mesh links."""
