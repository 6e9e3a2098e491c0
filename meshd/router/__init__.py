"""The sans-IO mesh core: wire codec, routing, reliability, custody (no sockets, no clocks)."""
