//! Tokio driver for the sans-IO CoAP endpoint: sockets, timers and the peer table.
