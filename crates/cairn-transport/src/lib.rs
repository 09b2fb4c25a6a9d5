//! Tokio driver for the sans-IO CoAP endpoint: it owns the UDP socket (batched receive with
//! `quinn-udp`), the timers and the map from endpoint events to waiting callers.
//!
//! One task per socket runs [`cairn_coap::Endpoint`]; handlers answer at once
//! ([`Reply::Ready`]) or later ([`Reply::Pending`], run on their own task so that a slow
//! resource never holds up other peers). Clients call [`CoapEndpoint::request`],
//! [`CoapEndpoint::observe`] and [`CoapEndpoint::ping`].

mod driver;
mod observe;
mod security;

pub use observe::{
    MAILBOX_CAPACITY, Mailbox, NotificationSink, Observation, ObservationHandle, ObservationMemory,
};
pub use security::Security;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use cairn_coap::{Code, Config, Message, ObserveRequest, RequestError};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// A request as a handler sees it.
#[derive(Clone, Debug)]
pub struct Request {
    pub peer: SocketAddr,
    pub message: Message,
    pub observe: ObserveRequest,
    /// The peer's authenticated identity (its DTLS PSK identity), if the socket is secured.
    pub identity: Option<Arc<[u8]>>,
}

/// A boxed future yielding a response.
pub type PendingReply = Pin<Box<dyn Future<Output = Message> + Send>>;

/// A handler's answer.
pub enum Reply {
    /// The response, available now.
    Ready(Message),
    /// The response, once the future completes; the peer gets an empty ACK meanwhile if needed.
    Pending(PendingReply),
}

impl From<Message> for Reply {
    fn from(message: Message) -> Self {
        Reply::Ready(message)
    }
}

/// Serves requests. Called on the socket's task: do slow work in [`Reply::Pending`].
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &Request) -> Reply;

    /// A peer with a DTLS connection ID now sends from `new` (NAT rebinding, RFC 9146 §6);
    /// requests to it must go to `new` from now on.
    fn peer_moved(&self, old: SocketAddr, new: SocketAddr) {
        let _ = (old, new);
    }
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Reply + Send + Sync + 'static,
{
    fn handle(&self, request: &Request) -> Reply {
        self(request)
    }
}

/// Why a request through the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Endpoint(#[from] cairn_coap::EndpointError),
    #[error("the endpoint task has stopped")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

pub(crate) enum Command {
    Request {
        peer: SocketAddr,
        message: Message,
        sink: ResponseSink,
    },
    Ping {
        peer: SocketAddr,
        done: oneshot::Sender<Result<(), TransportError>>,
    },
    Cancel {
        id: cairn_coap::RequestId,
        deregister: bool,
    },
    Resume {
        peer: SocketAddr,
        token: cairn_coap::Token,
        message: Message,
        rest: Arc<dyn NotificationSink>,
        done: oneshot::Sender<Result<cairn_coap::RequestId, TransportError>>,
    },
    Respond {
        exchange: cairn_coap::ExchangeId,
        response: Message,
    },
    Notify {
        path: String,
        /// The body of the FETCH that registered the observations, if they came by FETCH.
        fetch_body: Option<Vec<u8>>,
        response: Message,
        done: oneshot::Sender<usize>,
    },
    /// What an observation holds in the endpoint and here.
    Measure {
        id: cairn_coap::RequestId,
        done: oneshot::Sender<Option<ObservationMemory>>,
    },
    Shutdown,
}

/// The first response of an observe request: its id, token and message.
pub(crate) type FirstResponse = oneshot::Sender<
    Result<(cairn_coap::RequestId, Option<cairn_coap::Token>, Message), TransportError>,
>;

pub(crate) enum ResponseSink {
    Once(oneshot::Sender<Result<Message, TransportError>>),
    Stream {
        first: Option<FirstResponse>,
        rest: Arc<dyn NotificationSink>,
    },
}

/// A CoAP endpoint on a UDP socket: a server (with a handler), a client, or both.
pub struct CoapEndpoint {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddr,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl CoapEndpoint {
    /// Binds `address` for plain CoAP and starts the endpoint's task on the current runtime.
    pub async fn bind(
        address: SocketAddr,
        config: Config,
        handler: Option<Arc<dyn Handler>>,
    ) -> io::Result<Self> {
        Self::bind_secured(address, config, Security::NoSec, handler).await
    }

    /// Binds `address` with the given security (e.g. a DTLS server or client).
    pub async fn bind_secured(
        address: SocketAddr,
        config: Config,
        security: Security,
        handler: Option<Arc<dyn Handler>>,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(address).await?;
        Self::from_socket(socket, config, security, handler)
    }

    /// Starts an endpoint on a bound socket.
    pub fn from_socket(
        socket: UdpSocket,
        config: Config,
        security: Security,
        handler: Option<Arc<dyn Handler>>,
    ) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let (commands, receiver) = mpsc::channel(1024);
        let driver = driver::Driver::new(
            socket,
            config,
            security,
            handler,
            receiver,
            commands.clone(),
        )?;
        let task = tokio::spawn(driver.run());
        Ok(CoapEndpoint {
            commands,
            local_addr,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    async fn command(&self, command: Command) -> Result<(), TransportError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| TransportError::Closed)
    }

    /// Sends a request and waits for its complete response (Block2 already reassembled).
    pub async fn request(
        &self,
        peer: SocketAddr,
        message: Message,
    ) -> Result<Message, TransportError> {
        let (sink, response) = oneshot::channel();
        self.command(Command::Request {
            peer,
            message,
            sink: ResponseSink::Once(sink),
        })
        .await?;
        response.await.map_err(|_| TransportError::Closed)?
    }

    /// Fetches one Block2 block of a resource: block `num` of size `16 << szx` (RFC 7959
    /// §2.4). The response comes back as received, Block2, ETag and Size2 included; the
    /// endpoint does not fetch the following blocks, so a large body never sits in memory.
    pub async fn request_block(
        &self,
        peer: SocketAddr,
        mut message: Message,
        num: u32,
        szx: u8,
    ) -> Result<Message, TransportError> {
        let block = cairn_coap::BlockValue {
            num,
            more: false,
            szx: szx.min(6),
        };
        message
            .options
            .set_uint(cairn_coap::OptionNumber::BLOCK2, block.to_uint());
        self.request(peer, message).await
    }

    /// Registers an observation (the request gets Observe = 0) and returns the first response
    /// with a stream of the notifications that follow.
    pub async fn observe(
        &self,
        peer: SocketAddr,
        message: Message,
    ) -> Result<(Message, Observation), TransportError> {
        let mailbox = Arc::new(Mailbox::default());
        let (response, handle) = self.observe_with(peer, message, mailbox.clone()).await?;
        Ok((response, Observation { handle, mailbox }))
    }

    /// Registers an observation whose notifications go to `sink`, on the endpoint's task.
    /// Returns the first response; the sink sees only the notifications that follow.
    pub async fn observe_with(
        &self,
        peer: SocketAddr,
        mut message: Message,
        sink: Arc<dyn NotificationSink>,
    ) -> Result<(Message, ObservationHandle), TransportError> {
        message
            .options
            .set_uint(cairn_coap::OptionNumber::OBSERVE, 0);
        let (first, first_response) = oneshot::channel();
        self.command(Command::Request {
            peer,
            message,
            sink: ResponseSink::Stream {
                first: Some(first),
                rest: sink,
            },
        })
        .await?;
        let (id, token, response) = first_response.await.map_err(|_| TransportError::Closed)??;
        Ok((
            response,
            ObservationHandle {
                id,
                token,
                commands: self.commands.clone(),
            },
        ))
    }

    /// Takes over an observation registered earlier, by its token (e.g. one persisted before
    /// a restart): the peer's notifications with that token arrive on the returned stream.
    /// `message` is the original request, used when the observation is cancelled.
    pub async fn resume_observation(
        &self,
        peer: SocketAddr,
        token: &[u8],
        message: Message,
    ) -> Result<Observation, TransportError> {
        let mailbox = Arc::new(Mailbox::default());
        let handle = self
            .resume_observation_with(peer, token, message, mailbox.clone())
            .await?;
        Ok(Observation { handle, mailbox })
    }

    /// [`CoapEndpoint::resume_observation`] with the notifications going to `sink`.
    pub async fn resume_observation_with(
        &self,
        peer: SocketAddr,
        token: &[u8],
        message: Message,
        sink: Arc<dyn NotificationSink>,
    ) -> Result<ObservationHandle, TransportError> {
        let token = cairn_coap::Token::new(token).ok_or(TransportError::Endpoint(
            cairn_coap::EndpointError::UnknownRequest,
        ))?;
        let (done, resumed) = oneshot::channel();
        self.command(Command::Resume {
            peer,
            token,
            message,
            rest: sink,
            done,
        })
        .await?;
        let id = resumed.await.map_err(|_| TransportError::Closed)??;
        Ok(ObservationHandle {
            id,
            token: Some(token),
            commands: self.commands.clone(),
        })
    }

    /// Sends a CoAP ping and waits for the Reset that answers it.
    pub async fn ping(&self, peer: SocketAddr) -> Result<(), TransportError> {
        let (done, answer) = oneshot::channel();
        self.command(Command::Ping { peer, done }).await?;
        answer.await.map_err(|_| TransportError::Closed)?
    }

    /// Notifies every observer of `path`; returns how many there were.
    pub async fn notify(&self, path: &str, response: Message) -> Result<usize, TransportError> {
        let (done, count) = oneshot::channel();
        self.command(Command::Notify {
            path: path.to_owned(),
            fetch_body: None,
            response,
            done,
        })
        .await?;
        count.await.map_err(|_| TransportError::Closed)
    }

    /// Notifies every observer that registered with a FETCH of `path` carrying `body` (an
    /// LwM2M Observe-Composite); returns how many there were.
    pub async fn notify_fetch(
        &self,
        path: &str,
        body: &[u8],
        response: Message,
    ) -> Result<usize, TransportError> {
        let (done, count) = oneshot::channel();
        self.command(Command::Notify {
            path: path.to_owned(),
            fetch_body: Some(body.to_vec()),
            response,
            done,
        })
        .await?;
        count.await.map_err(|_| TransportError::Closed)
    }

    /// Stops the endpoint's task and waits until its socket is closed.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let task = self.task.lock().ok().and_then(|mut task| task.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// A response with a code and a text payload.
pub fn text_response(code: Code, text: impl Into<String>) -> Message {
    let mut response = Message::response(code);
    response.payload = text.into().into_bytes();
    if !response.payload.is_empty() {
        response.set_content_format(cairn_coap::ContentFormat::TEXT_PLAIN);
    }
    response
}
