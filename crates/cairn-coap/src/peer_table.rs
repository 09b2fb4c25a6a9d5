//! The endpoint's peers: a slab of peer records (each holding its own address) and a key-less
//! hash index of slab positions by address.
//!
//! A server holds one peer per device it talks to. In a map of boxed peers each costs its
//! box, a bucket with a copy of the address and a pointer, and its place in an arrival
//! queue; here it costs its slot and a 4-byte index entry. A position stays the same while
//! the peer lives, so the duplicate-detection queue can refer to it.

use core::hash::BuildHasher;
use std::net::SocketAddr;

use hashbrown::HashTable;

/// What the table needs of a peer record.
pub(crate) trait Addressed {
    fn address(&self) -> SocketAddr;
    fn set_address(&mut self, address: SocketAddr);
}

pub(crate) struct PeerTable<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T> core::fmt::Debug for PeerTable<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PeerTable")
            .field("len", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl<T: Addressed> PeerTable<T> {
    fn hash_at(slots: &[Option<T>], hasher: &foldhash::fast::RandomState, position: u32) -> u64 {
        match slots.get(position as usize) {
            Some(Some(peer)) => hasher.hash_one(peer.address()),
            _ => 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Slots, free ones included (positions are below this).
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn position(&self, address: &SocketAddr) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(address), |&position| {
                matches!(slots.get(position as usize), Some(Some(peer)) if peer.address() == *address)
            })
            .copied()
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, address: &SocketAddr) -> bool {
        self.position(address).is_some()
    }

    pub(crate) fn get(&self, address: &SocketAddr) -> Option<&T> {
        self.at(self.position(address)?)
    }

    pub(crate) fn get_mut(&mut self, address: &SocketAddr) -> Option<&mut T> {
        let position = self.position(address)?;
        self.at_mut(position)
    }

    pub(crate) fn at(&self, position: u32) -> Option<&T> {
        self.slots.get(position as usize)?.as_ref()
    }

    pub(crate) fn at_mut(&mut self, position: u32) -> Option<&mut T> {
        self.slots.get_mut(position as usize)?.as_mut()
    }

    /// Adds a peer whose address is not in the table yet; returns its position.
    pub(crate) fn insert(&mut self, peer: T) -> u32 {
        let hash = self.hasher.hash_one(peer.address());
        let mut reused = None;
        while let Some(position) = self.free.pop() {
            if matches!(self.slots.get(position as usize), Some(None)) {
                reused = Some(position);
                break;
            }
        }
        let position = match reused {
            Some(position) => {
                self.slots[position as usize] = Some(peer);
                position
            }
            None => {
                // The table is bounded by `Config::max_peers`, far below u32::MAX.
                let position = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(peer));
                position
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, position, |&p| Self::hash_at(slots, hasher, p));
        position
    }

    /// Gives the peer at `position` the address `new` (not in the table), keeping its
    /// position, which other tables refer to.
    pub(crate) fn rekey(&mut self, position: u32, new: SocketAddr) {
        let Some(old) = self.at(position).map(Addressed::address) else {
            return;
        };
        let hash = self.hasher.hash_one(old);
        if let Ok(entry) = self.index.find_entry(hash, |&p| p == position) {
            entry.remove();
        }
        if let Some(Some(peer)) = self.slots.get_mut(position as usize) {
            peer.set_address(new);
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(new), position, |&p| {
                Self::hash_at(slots, hasher, p)
            });
    }

    pub(crate) fn remove_at(&mut self, position: u32) -> Option<T> {
        let address = self.at(position)?.address();
        let hash = self.hasher.hash_one(address);
        if let Ok(entry) = self.index.find_entry(hash, |&p| p == position) {
            entry.remove();
        }
        let peer = self.slots.get_mut(position as usize)?.take();
        if position as usize + 1 == self.slots.len() {
            self.slots.pop();
        } else {
            self.free.push(position);
        }
        peer
    }

    #[cfg(test)]
    pub(crate) fn remove(&mut self, address: &SocketAddr) -> Option<T> {
        self.remove_at(self.position(address)?)
    }

    /// Gives back memory once most of the table is gone: trailing free slots, stale free-list
    /// entries, and room in the slab and the index.
    pub(crate) fn shrink(&mut self) {
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        if self.free.len() > 64 && self.free.len() > self.slots.len() / 2 {
            let slots = &self.slots;
            self.free
                .retain(|&p| matches!(slots.get(p as usize), Some(None)));
            self.free.sort_unstable();
            self.free.dedup();
        }
        let len = self.index.len();
        if self.index.capacity() > 64 && len < self.index.capacity() / 4 {
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.index
                .shrink_to(len * 2, |&p| Self::hash_at(slots, hasher, p));
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2);
        }
        if self.free.capacity() > 64 && self.free.len() < self.free.capacity() / 4 {
            self.free.shrink_to(self.free.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Probe(SocketAddr, u32);

    impl Addressed for Probe {
        fn address(&self) -> SocketAddr {
            self.0
        }

        fn set_address(&mut self, address: SocketAddr) {
            self.0 = address;
        }
    }

    #[test]
    fn rekey_keeps_the_position() {
        let mut table = PeerTable::default();
        for n in 0..100u16 {
            table.insert(Probe(address(n), n.into()));
        }
        let position = table.position(&address(42)).unwrap();
        table.rekey(position, address(1042));
        assert_eq!(table.position(&address(42)), None);
        assert_eq!(table.position(&address(1042)), Some(position));
        assert_eq!(table.at(position), Some(&Probe(address(1042), 42)));
        assert_eq!(table.len(), 100);
        for n in (0..100u16).filter(|&n| n != 42) {
            assert_eq!(table.position(&address(n)), Some(u32::from(n)));
        }
    }

    fn address(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[test]
    fn insert_find_remove_and_reuse() {
        let mut table = PeerTable::default();
        for n in 0..300u16 {
            assert_eq!(table.insert(Probe(address(n), n.into())), u32::from(n));
        }
        assert_eq!(table.len(), 300);
        assert_eq!(table.get(&address(7)).map(|p| p.1), Some(7));
        assert_eq!(table.remove(&address(7)).map(|p| p.1), Some(7));
        assert!(table.get(&address(7)).is_none());
        assert!(table.remove(&address(7)).is_none());
        assert_eq!(table.insert(Probe(address(1000), 1000)), 7);
        assert_eq!(table.position(&address(1000)), Some(7));
        table.get_mut(&address(1000)).unwrap().1 = 5;
        assert_eq!(table.at(7).map(|p| p.1), Some(5));
        for n in 0..300u16 {
            table.remove(&address(n));
        }
        table.shrink();
        assert_eq!(table.len(), 1);
        assert!(table.contains_key(&address(1000)));
        assert_eq!(table.slot_count(), 8);
    }

    #[test]
    fn emptied_table_gives_memory_back() {
        let mut table = PeerTable::default();
        for n in 0..5000u16 {
            table.insert(Probe(address(n), 0));
        }
        for n in 0..5000u16 {
            table.remove(&address(n));
        }
        table.shrink();
        assert!(table.is_empty());
        assert_eq!(table.slot_count(), 0);
        assert!(table.index.capacity() < 1000);
        assert!(table.free.capacity() < 1000);
    }
}
