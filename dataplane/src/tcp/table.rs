//! The connection table: a slab of [`Conn`]s (capacity fixed at start-up)
//! and a chained hash table over the 4-tuple with a power-of-two number of
//! buckets (at least the slab's capacity), keyed with SipHash so that
//! lookups stay O(1) even against a peer choosing its ports. Nothing here
//! allocates after [`ConnTable::new`].

use std::net::{Ipv4Addr, SocketAddrV4};

use super::conn::{Conn, State};
use super::isn::{siphash13, tuple_bytes, SipKey};
use super::list::NIL;
use super::{ConnId, FourTuple};

const UNSPECIFIED: FourTuple = FourTuple {
    local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    remote: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
};

pub(crate) struct ConnTable {
    conns: Vec<Conn>,
    buckets: Vec<u32>,
    mask: usize,
    free: u32,
    live: usize,
    key: SipKey,
}

impl ConnTable {
    pub(crate) fn new(capacity: usize, key: SipKey) -> ConnTable {
        assert!(
            capacity > 0 && capacity < NIL as usize,
            "max_conns out of range"
        );
        let conns = (0..capacity)
            .map(|i| {
                let mut c = Conn::empty(UNSPECIFIED);
                c.hnext = if i + 1 < capacity { i as u32 + 1 } else { NIL };
                c
            })
            .collect();
        let nb = capacity.next_power_of_two();
        ConnTable {
            conns,
            buckets: vec![NIL; nb],
            mask: nb - 1,
            free: 0,
            live: 0,
            key,
        }
    }

    #[inline]
    fn bucket(&self, t: &FourTuple) -> usize {
        siphash13(self.key, &tuple_bytes(t.local, t.remote)) as usize & self.mask
    }

    /// Index of the connection with this 4-tuple.
    pub(crate) fn lookup(&self, t: &FourTuple) -> Option<u32> {
        let mut i = self.buckets[self.bucket(t)];
        while i != NIL {
            let c = &self.conns[i as usize];
            if c.tuple == *t {
                return Some(i);
            }
            i = c.hnext;
        }
        None
    }

    /// Stores `conn` (its tuple not yet in the table) in a free slot and
    /// hashes it. `None` when the slab is full.
    pub(crate) fn insert(&mut self, mut conn: Conn) -> Option<u32> {
        let i = self.free;
        if i == NIL {
            return None;
        }
        let slot = &mut self.conns[i as usize];
        self.free = slot.hnext;
        conn.gen = slot.gen;
        let b = self.bucket(&conn.tuple);
        conn.hnext = self.buckets[b];
        self.buckets[b] = i;
        self.conns[i as usize] = conn;
        self.live += 1;
        Some(i)
    }

    /// Unhashes and frees slot `i`; its generation moves on so old handles
    /// go stale.
    pub(crate) fn remove(&mut self, i: u32) {
        let tuple = self.conns[i as usize].tuple;
        let b = self.bucket(&tuple);
        let mut prev = NIL;
        let mut cur = self.buckets[b];
        while cur != NIL && cur != i {
            prev = cur;
            cur = self.conns[cur as usize].hnext;
        }
        debug_assert_eq!(cur, i, "removing an unhashed connection");
        let next = self.conns[i as usize].hnext;
        if prev == NIL {
            self.buckets[b] = next;
        } else {
            self.conns[prev as usize].hnext = next;
        }
        let gen = self.conns[i as usize].gen.wrapping_add(1);
        let mut empty = Conn::empty(UNSPECIFIED);
        empty.gen = gen;
        empty.hnext = self.free;
        self.conns[i as usize] = empty;
        self.free = i;
        self.live -= 1;
    }

    /// The handle of slot `i`.
    #[inline]
    pub(crate) fn id(&self, i: u32) -> ConnId {
        ConnId {
            idx: i,
            gen: self.conns[i as usize].gen,
        }
    }

    /// The slot of a live handle.
    #[inline]
    pub(crate) fn resolve(&self, id: ConnId) -> Option<u32> {
        let c = self.conns.get(id.idx as usize)?;
        (c.gen == id.gen && c.state != State::Closed).then_some(id.idx)
    }

    #[inline]
    pub(crate) fn get(&self, i: u32) -> &Conn {
        &self.conns[i as usize]
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, i: u32) -> &mut Conn {
        &mut self.conns[i as usize]
    }

    /// Appends the handle and tuple of every live connection (a scan of
    /// the slab: not for the per-packet path).
    pub(crate) fn live(&self, out: &mut Vec<(ConnId, FourTuple)>) {
        for (i, c) in self.conns.iter().enumerate() {
            if c.state != State::Closed {
                out.push((self.id(i as u32), c.tuple));
            }
        }
    }

    /// Live connections whose state satisfies `pred` (a scan of the slab:
    /// not for the per-packet path).
    pub(crate) fn count_where(&self, pred: impl Fn(super::conn::State) -> bool) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state != super::conn::State::Closed && pred(c.state))
            .count()
    }

    /// Connections in use.
    /// Connections in use.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Slab capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpConfig;
    use crate::wire::tcp::SeqNum;

    fn tuple(port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
        }
    }

    fn conn(port: u16) -> Conn {
        Conn::open(
            tuple(port),
            State::Established,
            0,
            SeqNum(1),
            &TcpConfig::default(),
        )
    }

    #[test]
    fn insert_lookup_remove_and_stale_handles() {
        let mut t = ConnTable::new(3, SipKey::new([7; 16]));
        let a = t.insert(conn(1)).unwrap();
        let b = t.insert(conn(2)).unwrap();
        let c = t.insert(conn(3)).unwrap();
        assert!(t.insert(conn(4)).is_none(), "full");
        assert_eq!(t.lookup(&tuple(2)), Some(b));
        let old = t.id(b);
        t.remove(b);
        assert_eq!(t.lookup(&tuple(2)), None);
        assert_eq!(t.resolve(old), None);
        assert_eq!(t.lookup(&tuple(1)), Some(a));
        assert_eq!(t.lookup(&tuple(3)), Some(c));
        let d = t.insert(conn(5)).unwrap();
        assert_eq!(d, b, "slot reused");
        assert_eq!(t.resolve(old), None, "reused slot has a new generation");
        assert_eq!(t.resolve(t.id(d)), Some(d));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn chains_survive_removal_in_any_order() {
        // 64 tuples in 64 buckets: by the birthday bound several share a
        // bucket, so removals unlink from the middle of chains.
        let mut t = ConnTable::new(64, SipKey::new([1; 16]));
        let ids: Vec<u32> = (1..=64).map(|p| t.insert(conn(p)).unwrap()).collect();
        for (p, i) in (1..=64).zip(&ids) {
            if p % 3 == 0 {
                t.remove(*i);
            }
        }
        for p in 1..=64u16 {
            assert_eq!(t.lookup(&tuple(p)).is_some(), p % 3 != 0, "port {p}");
        }
    }
}
