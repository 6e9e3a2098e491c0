"""MLS (RFC 9420) for meshd: the ``MlsEngine`` interface (:mod:`.engine`), its mls-rs
implementation (:mod:`.mlsrs`), state persistence (:mod:`.storage`), the node-key
endorsement of MLS credentials (:mod:`.credential`) and an RFC 9420 codec (:mod:`.wire`).

Nothing outside this package depends on it yet; issue 4 wires it into the daemon.
"""
