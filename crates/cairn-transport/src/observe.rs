//! Where the notifications of an observation go.
//!
//! An observation costs the endpoint one entry in its sink table and whatever its
//! [`NotificationSink`] holds: no task and no channel per observation, so a server can hold
//! one for each of hundreds of thousands of devices.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use cairn_coap::Message;
use tokio::sync::mpsc;

use crate::Command;

/// Receives the notifications of one observation. Called on the endpoint's task, so it must
/// not block.
pub trait NotificationSink: Send + Sync + 'static {
    /// A fresh notification (or the final response that ends the observation). Returns
    /// `false` when nobody wants the notifications any more: the endpoint then forgets the
    /// observation and answers the next notification with Reset.
    fn deliver(&self, message: Message) -> bool;

    /// The observation is over: ended by the peer, cancelled, failed, or the endpoint stopped.
    /// Called once, after the last [`NotificationSink::deliver`].
    fn closed(&self) {}
}

/// How many undelivered items a [`Mailbox`] holds; newer ones are dropped while it is full
/// (an observer that reads slowly misses intermediate values, which RFC 7641 allows).
pub const MAILBOX_CAPACITY: usize = 64;

/// A single-consumer queue that allocates nothing until an item arrives: 40 bytes while
/// empty (a lock, the waiting receiver's waker, flags), the queue itself boxed on demand and
/// freed once drained, so an idle observation holds no buffer.
pub struct Mailbox<T> {
    state: Mutex<MailboxState<T>>,
}

struct MailboxState<T> {
    /// Boxed: an empty mailbox then holds 8 bytes here instead of a 32-byte `VecDeque`.
    #[allow(clippy::box_collection)]
    items: Option<Box<VecDeque<T>>>,
    /// The receiver waiting in [`Mailbox::recv`], if any.
    waker: Option<Waker>,
    closed: bool,
    receiver_gone: bool,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            state: Mutex::new(MailboxState {
                items: None,
                waker: None,
                closed: false,
                receiver_gone: false,
            }),
        }
    }
}

impl<T> Mailbox<T> {
    /// A mailbox without a receiver that still counts as wanted: it takes nothing, and
    /// [`Mailbox::push`] returns `true` (for a sink whose items go elsewhere too).
    pub fn discarding() -> Self {
        let mailbox = Mailbox::default();
        mailbox.state().closed = true;
        mailbox
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MailboxState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item; `false` once the receiver is gone (the item is dropped).
    pub fn push(&self, item: T) -> bool {
        let mut state = self.state();
        if state.receiver_gone {
            return false;
        }
        if state.closed {
            return true;
        }
        let items = state.items.get_or_insert_with(Box::default);
        if items.len() < MAILBOX_CAPACITY {
            items.push_back(item);
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        true
    }

    /// No more items will come; the receiver sees `None` after the queued ones.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The receiver will not read again: later pushes return `false`.
    pub fn receiver_dropped(&self) {
        let mut state = self.state();
        state.receiver_gone = true;
        state.items = None;
        state.waker = None;
    }

    pub fn is_receiver_gone(&self) -> bool {
        self.state().receiver_gone
    }

    /// The next item, or `None` once the mailbox is closed and empty.
    pub async fn recv(&self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Mailbox::recv`] as a poll: the waker of the last call is woken by the next push.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.state();
        if let Some(items) = state.items.as_mut() {
            if let Some(item) = items.pop_front() {
                if items.is_empty() {
                    // Give back the buffer: an idle observation holds no memory.
                    state.items = None;
                }
                return Poll::Ready(Some(item));
            }
        }
        if state.closed {
            return Poll::Ready(None);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Bytes the mailbox holds on the heap besides itself (its queue, while not empty).
    pub fn heap_bytes(&self) -> usize {
        self.state().items.as_ref().map_or(0, |items| {
            core::mem::size_of::<VecDeque<T>>() + items.capacity() * core::mem::size_of::<T>()
        })
    }
}

/// What a shared mailbox holds: its allocation (two reference counts and the mailbox) and
/// its queue.
pub fn mailbox_bytes<T>(mailbox: &Arc<Mailbox<T>>) -> usize {
    2 * core::mem::size_of::<usize>() + core::mem::size_of::<Mailbox<T>>() + mailbox.heap_bytes()
}

impl NotificationSink for Mailbox<Message> {
    fn deliver(&self, message: Message) -> bool {
        self.push(message)
    }

    fn closed(&self) {
        self.close();
    }
}

/// What an established observation holds in memory, by layer, in bytes (for memory figures):
/// its request in the CoAP endpoint (slot, heap, token index entry), its entry in the
/// transport's sink table, and its sink (filled in by whoever made the sink).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObservationMemory {
    pub coap: usize,
    pub transport: usize,
    pub sink: usize,
}

impl ObservationMemory {
    pub fn total(&self) -> usize {
        self.coap + self.transport + self.sink
    }
}

/// A registered observation, without a stream: its notifications go to the sink it was
/// registered with.
pub struct ObservationHandle {
    pub(crate) id: cairn_coap::RequestId,
    pub(crate) token: Option<cairn_coap::Token>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl ObservationHandle {
    /// The token the peer's notifications carry (to persist the observation).
    pub fn token(&self) -> Option<&[u8]> {
        self.token.as_ref().map(cairn_coap::Token::as_bytes)
    }

    /// Deregisters with a GET carrying Observe = 1 (RFC 7641 §3.6).
    pub async fn cancel(self) {
        let _ = self
            .commands
            .send(Command::Cancel {
                id: self.id,
                deregister: true,
            })
            .await;
    }

    /// [`ObservationHandle::cancel`] from synchronous code (a `Drop`): the deregistration is
    /// queued to the endpoint's task without waiting.
    pub fn cancel_soon(self) {
        let command = Command::Cancel {
            id: self.id,
            deregister: true,
        };
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let commands = self.commands;
                runtime.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }

    /// What the observation holds in the endpoint and the transport; `None` once it is over.
    pub async fn memory(&self) -> Option<ObservationMemory> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Measure { id: self.id, done })
            .await
            .ok()?;
        answer.await.ok().flatten()
    }

    /// Forgets the observation without telling the peer: its next notification is answered
    /// with Reset (RFC 7641 §3.6).
    pub fn forget(self) {
        let _ = self.commands.try_send(Command::Cancel {
            id: self.id,
            deregister: false,
        });
    }
}

/// Notifications of an observation; dropping it forgets the observation (the next
/// notification is answered with Reset), [`Observation::cancel`] deregisters explicitly.
pub struct Observation {
    pub(crate) handle: ObservationHandle,
    pub(crate) mailbox: Arc<Mailbox<Message>>,
}

impl Observation {
    /// The token the peer's notifications carry (to persist the observation).
    pub fn token(&self) -> Option<&[u8]> {
        self.handle.token()
    }

    /// What the observation holds in memory, its mailbox included; `None` once it is over.
    pub async fn memory(&self) -> Option<ObservationMemory> {
        let mut memory = self.handle.memory().await?;
        memory.sink = mailbox_bytes(&self.mailbox);
        Some(memory)
    }

    /// The next fresh notification, or `None` once the observation has ended.
    pub async fn next(&mut self) -> Option<Message> {
        self.mailbox.recv().await
    }

    /// Deregisters with a GET carrying Observe = 1 (RFC 7641 §3.6).
    pub async fn cancel(self) {
        let (id, commands) = (self.handle.id, self.handle.commands.clone());
        drop(self);
        let _ = commands
            .send(Command::Cancel {
                id,
                deregister: true,
            })
            .await;
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.mailbox.receiver_dropped();
    }
}
