//! Where the notifications of an observation go.
//!
//! An observation costs the endpoint one entry in its sink table and whatever its
//! [`NotificationSink`] holds: no task and no channel per observation, so a server can hold
//! one for each of hundreds of thousands of devices.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cairn_coap::Message;
use tokio::sync::{Notify, mpsc};

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

/// A single-consumer queue that allocates nothing until an item arrives.
pub struct Mailbox<T> {
    state: Mutex<MailboxState<T>>,
    notify: Notify,
}

struct MailboxState<T> {
    items: VecDeque<T>,
    closed: bool,
    receiver_gone: bool,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            state: Mutex::new(MailboxState {
                items: VecDeque::new(),
                closed: false,
                receiver_gone: false,
            }),
            notify: Notify::new(),
        }
    }
}

impl<T> Mailbox<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, MailboxState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item; `false` once the receiver is gone (the item is dropped).
    pub fn push(&self, item: T) -> bool {
        let mut state = self.state();
        if state.receiver_gone {
            return false;
        }
        if state.items.len() < MAILBOX_CAPACITY && !state.closed {
            state.items.push_back(item);
            drop(state);
            self.notify.notify_one();
        }
        true
    }

    /// No more items will come; the receiver sees `None` after the queued ones.
    pub fn close(&self) {
        self.state().closed = true;
        self.notify.notify_one();
    }

    /// The receiver will not read again: later pushes return `false`.
    pub fn receiver_dropped(&self) {
        let mut state = self.state();
        state.receiver_gone = true;
        state.items = VecDeque::new();
    }

    pub fn is_receiver_gone(&self) -> bool {
        self.state().receiver_gone
    }

    /// The next item, or `None` once the mailbox is closed and empty.
    pub async fn recv(&self) -> Option<T> {
        loop {
            {
                let mut state = self.state();
                if let Some(item) = state.items.pop_front() {
                    if state.items.is_empty() {
                        // Give back the buffer: an idle observation holds no memory.
                        state.items = VecDeque::new();
                    }
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check
            // above and this wait is not lost.
            self.notify.notified().await;
        }
    }
}

impl NotificationSink for Mailbox<Message> {
    fn deliver(&self, message: Message) -> bool {
        self.push(message)
    }

    fn closed(&self) {
        self.close();
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
