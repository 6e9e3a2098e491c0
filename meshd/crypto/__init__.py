"""Identity, TOFU, link handshake and end-to-end encryption."""
