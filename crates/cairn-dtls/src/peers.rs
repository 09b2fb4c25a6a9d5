//! A server's peer table: the connections in a slab, each with its address, and a key-less
//! hash index of slab positions by address.
//!
//! A server holds one entry per device. In a hash map of connections every bucket is a full
//! connection, and at the table's usual load a quarter or more of them are empty; here an
//! empty bucket costs four bytes, and the slab grows only as far as it is used. A position
//! stays the same while the peer lives, also when its address changes, so other indexes
//! (by connection ID) can refer to it.

use core::net::SocketAddr;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::connection::Connection;

/// Peers by address, at stable positions.
#[derive(Default)]
pub(crate) struct PeerTable {
    slots: Vec<Option<(SocketAddr, Connection)>>,
    free: Vec<u32>,
    by_address: HashTable<u32>,
    hasher: RandomState,
}

impl PeerTable {
    fn hash(&self, address: &SocketAddr) -> u64 {
        self.hasher.hash_one(address)
    }

    /// Peers in the table.
    pub(crate) fn len(&self) -> usize {
        self.by_address.len()
    }

    /// The slab position of the peer at `address`.
    pub(crate) fn position(&self, address: &SocketAddr) -> Option<u32> {
        let slots = &self.slots;
        self.by_address
            .find(self.hash(address), |&position| {
                matches!(slots.get(position as usize), Some(Some((a, _))) if a == address)
            })
            .copied()
    }

    /// The peer at a slab position.
    pub(crate) fn at(&self, position: u32) -> Option<(SocketAddr, &Connection)> {
        let (address, connection) = self.slots.get(position as usize)?.as_ref()?;
        Some((*address, connection))
    }

    pub(crate) fn contains_key(&self, address: &SocketAddr) -> bool {
        self.position(address).is_some()
    }

    pub(crate) fn get(&self, address: &SocketAddr) -> Option<&Connection> {
        let position = self.position(address)?;
        self.slots[position as usize].as_ref().map(|(_, c)| c)
    }

    pub(crate) fn get_mut(&mut self, address: &SocketAddr) -> Option<&mut Connection> {
        let position = self.position(address)?;
        self.slots[position as usize].as_mut().map(|(_, c)| c)
    }

    /// Inserts or replaces the connection of `address`; returns its position.
    pub(crate) fn insert(&mut self, address: SocketAddr, connection: Connection) -> u32 {
        if let Some(position) = self.position(&address) {
            self.slots[position as usize] = Some((address, connection));
            return position;
        }
        // The free list may hold positions that were cut off the end or taken again since
        // (see `shrink`): those are skipped.
        let mut reused = None;
        while let Some(position) = self.free.pop() {
            if matches!(self.slots.get(position as usize), Some(None)) {
                reused = Some(position);
                break;
            }
        }
        let position = match reused {
            Some(position) => {
                self.slots[position as usize] = Some((address, connection));
                position
            }
            None => {
                // More than u32::MAX peers cannot be reached: `max_peers` bounds the table.
                let position = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some((address, connection)));
                position
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_address
            .insert_unique(self.hasher.hash_one(address), position, |&p| {
                match slots.get(p as usize) {
                    Some(Some((a, _))) => hasher.hash_one(a),
                    _ => 0,
                }
            });
        position
    }

    pub(crate) fn remove(&mut self, address: &SocketAddr) -> Option<Connection> {
        let hash = self.hash(address);
        let slots = &self.slots;
        let entry = self
            .by_address
            .find_entry(hash, |&position| {
                matches!(slots.get(position as usize), Some(Some((a, _))) if a == address)
            })
            .ok()?;
        let (position, _) = entry.remove();
        let (_, connection) = self.slots[position as usize].take()?;
        if position as usize + 1 == self.slots.len() {
            self.slots.pop();
        } else {
            self.free.push(position);
        }
        self.shrink();
        Some(connection)
    }

    /// Moves the peer at `old` to `new` (which must be free), keeping its position.
    pub(crate) fn rekey(&mut self, old: &SocketAddr, new: SocketAddr) -> bool {
        let hash = self.hash(old);
        let slots = &self.slots;
        let Ok(entry) = self.by_address.find_entry(
            hash,
            |&position| matches!(slots.get(position as usize), Some(Some((a, _))) if a == old),
        ) else {
            return false;
        };
        let (position, _) = entry.remove();
        if let Some((address, _)) = self.slots[position as usize].as_mut() {
            *address = new;
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_address
            .insert_unique(self.hasher.hash_one(new), position, |&p| {
                match slots.get(p as usize) {
                    Some(Some((a, _))) => hasher.hash_one(a),
                    _ => 0,
                }
            });
        true
    }

    /// Gives back memory once most of the table is gone (e.g. after a storm of handshakes
    /// that failed): trailing free slots, and index room.
    fn shrink(&mut self) {
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        if self.free.len() > 64 && self.free.len() > self.slots.len() {
            let slots = &self.slots;
            self.free
                .retain(|&p| matches!(slots.get(p as usize), Some(None)));
        }
        let len = self.by_address.len();
        if self.by_address.capacity() > 64 && len < self.by_address.capacity() / 4 {
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.by_address
                .shrink_to(len * 2, |&p| match slots.get(p as usize) {
                    Some(Some((a, _))) => hasher.hash_one(a),
                    _ => 0,
                });
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{ConnectionId, StoredCid};

    fn address(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    fn closed(n: u8) -> Connection {
        Connection::Closed(StoredCid::new(&ConnectionId::new(&[n]).unwrap()), None)
    }

    #[test]
    fn insert_get_remove_and_reuse() {
        let mut table = PeerTable::default();
        for n in 0..200u16 {
            table.insert(address(n), closed(n as u8));
        }
        assert_eq!(table.len(), 200);
        assert_eq!(
            table.get(&address(7)).map(Connection::cid_in),
            Some(ConnectionId::new(&[7]).unwrap())
        );
        let position = table.position(&address(7)).unwrap();
        assert!(table.remove(&address(7)).is_some());
        assert!(table.get(&address(7)).is_none());
        assert!(table.remove(&address(7)).is_none());
        assert_eq!(table.len(), 199);
        // A freed position is reused.
        assert_eq!(table.insert(address(1000), closed(1)), position);
        // Replacing keeps the position.
        assert_eq!(table.insert(address(1000), closed(2)), position);
        assert_eq!(table.len(), 200);
        for n in 0..200u16 {
            table.remove(&address(n));
        }
        assert_eq!(table.len(), 1);
        assert!(table.contains_key(&address(1000)));
    }

    #[test]
    fn rekey_keeps_the_position() {
        let mut table = PeerTable::default();
        table.insert(address(1), closed(1));
        let position = table.insert(address(2), closed(2));
        assert!(table.rekey(&address(2), address(3)));
        assert!(!table.contains_key(&address(2)));
        assert_eq!(table.position(&address(3)), Some(position));
        assert_eq!(table.at(position).map(|(a, _)| a), Some(address(3)));
        assert!(!table.rekey(&address(9), address(10)));
    }

    #[test]
    fn emptied_table_gives_memory_back() {
        let mut table = PeerTable::default();
        for n in 0..5000u16 {
            table.insert(address(n), closed(0));
        }
        for n in 0..5000u16 {
            table.remove(&address(n));
        }
        assert_eq!(table.len(), 0);
        assert!(table.slots.is_empty());
        assert!(table.by_address.capacity() < 1000);
    }
}
