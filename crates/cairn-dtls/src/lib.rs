//! Sans-IO DTLS 1.2 engine (RFC 6347) with pre-shared keys and connection IDs.
#![forbid(unsafe_code)]
