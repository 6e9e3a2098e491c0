"""End-to-end layer: what a DATA frame's payload carries between two nodes' meshd.

Every user message is MLS (RFC 9420) ciphertext; the first payload byte says which
sub-protocol the rest belongs to (``meshd.e2e.kinds``).
"""
