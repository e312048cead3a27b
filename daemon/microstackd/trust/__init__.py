"""Trust: the only room that touches keys, certificates, the KDF and the PAKE.

    names       the one identity validator (node names, host names, addresses)
    x509        keys, certificates, the cluster CA, node identities
    kdf         the password verifier (scrypt) and the file the control keeps it in
    transcript  the bootstrap transcript, its confirmations and ``derive_key``
    exchange    the joiner's hello and the two sides of the bootstrap exchange
    pake        SPAKE2 over Ed25519
    tokens      one-time join tokens

Pure: no I/O, no clock, no gRPC. It may import ``model``, ``errors`` and its
own modules only (tests/unit/test_layers.py).
"""
