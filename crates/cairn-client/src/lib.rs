//! The LwM2M client (OMA LwM2M Core 1.2 §6: registration, device management, information
//! reporting): objects behind the [`ObjectHandler`] trait with built-in Security, Server,
//! Access Control, Device and Connectivity Monitoring objects; the registration state
//! machine ([`Registration`]) and the client core ([`ClientCore`]), both sans-IO; and, with
//! the `runtime` feature, a tokio driver ([`Client`]) on `cairn-transport`.
//!
//! ```text
//!  server request ──► ClientCore::serve ──► ObjectTree ──► ObjectHandler (per object)
//!  timers ──────────► ClientCore::handle_timeout ──► Registration (per server)
//!                     ClientCore::poll_request / poll_notification / poll_event ──► driver
//! ```
#![forbid(unsafe_code)]

pub mod access;
pub mod bootstrap;
mod core;
pub mod credentials;
mod error;
pub mod object;
pub mod objects;
pub mod observe;
pub mod registration;
mod tree;

#[cfg(feature = "runtime")]
pub mod device;
#[cfg(feature = "runtime")]
mod driver;
#[cfg(feature = "runtime")]
pub mod firmware_agent;

pub use crate::core::{ClientCore, Event, Notification, OutgoingRequest, RequestToken, ServerId};
pub use error::ClientError;
pub use object::{ClientAction, InstanceStore, ObjectError, ObjectHandler};
pub use registration::{
    Registration, RegistrationEvent, RegistrationSettings, RegistrationState, RequestFailure,
    RetryPolicy,
};
pub use tree::ObjectTree;

#[cfg(feature = "runtime")]
pub use driver::{Client, ClientHandle, ServerConnection};
