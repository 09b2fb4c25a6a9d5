//! Errors of the client library.

use cairn_lwm2m::{LwM2mPath, OperationError};

use crate::object::ObjectError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server with this id.
    #[error("unknown server")]
    UnknownServer,
    /// The operation needs a registration.
    #[error("not registered")]
    NotRegistered,
    /// The operation is not available in this configuration.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// An object refused.
    #[error("{path}: {source}")]
    Object {
        /// The path.
        path: LwM2mPath,
        /// Why.
        source: ObjectError,
    },
    /// A request could not be encoded.
    #[error(transparent)]
    Operation(#[from] OperationError),
    /// The socket could not be bound.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server address or URI is not usable.
    #[error("server address: {0}")]
    Address(String),
}
