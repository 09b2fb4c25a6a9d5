//! `cairn bench echo-server`: the raw UDP baseline of `cairn bench coap`. It sends every
//! datagram back to where it came from, and does nothing else, with batched I/O:
//! `recvmmsg` through `quinn-udp`, `sendmmsg` through `rustix`, one thread.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

/// Room for one received datagram (or a coalesced batch of them).
const RECEIVE_BUFFER_LEN: usize = 64 * 1024;
/// Socket buffer sizes asked for, so that bursts are not dropped.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Echoes datagrams on `listen` until the process is killed.
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let state = UdpSocketState::new((&socket).into())?;
    // Smaller buffers only mean drops under bursts, which the generator counts.
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES);
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(1);
    let mut storage = vec![0u8; BATCH_SIZE * RECEIVE_BUFFER_LEN];
    let mut buffers: Vec<IoSliceMut<'_>> = storage
        .chunks_mut(RECEIVE_BUFFER_LEN)
        .map(IoSliceMut::new)
        .collect();
    let mut metas = vec![RecvMeta::default(); BATCH_SIZE];
    loop {
        match poll.poll(&mut events, None) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        loop {
            let received = match state.recv((&socket).into(), &mut buffers, &mut metas) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            echo(&socket, &buffers[..received], &metas[..received]);
            // A short batch means the queue was empty; a later datagram raises a new edge.
            if received < buffers.len() {
                break;
            }
        }
    }
}

/// Sends each datagram back to its source with as few `sendmmsg` calls as the kernel
/// allows. What the kernel cannot take now is dropped, as UDP may.
fn echo(socket: &mio::net::UdpSocket, buffers: &[IoSliceMut<'_>], metas: &[RecvMeta]) {
    let mut sources: Vec<SocketAddrAny> = Vec::with_capacity(buffers.len());
    let mut datagrams: Vec<[IoSlice<'_>; 1]> = Vec::with_capacity(buffers.len());
    for (buffer, meta) in buffers.iter().zip(metas) {
        for datagram in buffer[..meta.len].chunks(meta.stride.max(1)) {
            sources.push(SocketAddrAny::from(meta.addr));
            datagrams.push([IoSlice::new(datagram)]);
        }
    }
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = datagrams
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = sources
        .iter()
        .zip(&datagrams)
        .zip(controls.iter_mut())
        .map(|((source, datagram), control)| MMsgHdr::new_with_addr(source, datagram, control))
        .collect();
    let mut sent = 0;
    while sent < messages.len() {
        match sendmmsg(socket, &mut messages[sent..], SendFlags::empty()) {
            Ok(count) => sent += count,
            Err(rustix::io::Errno::INTR) => {}
            // A peer gone away (refused) or a full buffer: skip that datagram.
            Err(_) => sent += 1,
        }
    }
}
