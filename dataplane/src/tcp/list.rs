//! A fixed-capacity slab of singly linked list nodes, shared by all the
//! connections of a stack: send queues (of `TxBuf`s) and receive queues
//! (of `PktBuf` views) are lists threaded through it, so queueing never
//! allocates after start-up. Indices are `u32`, [`NIL`] ends a list.

/// End of a list.
pub(crate) const NIL: u32 = u32::MAX;

/// Nodes holding `V`s, with a free list.
pub(crate) struct NodeSlab<V> {
    vals: Vec<Option<V>>,
    next: Vec<u32>,
    free: u32,
    used: usize,
}

impl<V> NodeSlab<V> {
    /// A slab of `capacity` nodes, all free.
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity < NIL as usize, "node slab too large");
        NodeSlab {
            vals: (0..capacity).map(|_| None).collect(),
            next: (0..capacity)
                .map(|i| if i + 1 < capacity { i as u32 + 1 } else { NIL })
                .collect(),
            free: if capacity > 0 { 0 } else { NIL },
            used: 0,
        }
    }

    /// Takes a free node holding `v` (its `next` is [`NIL`]), or gives `v`
    /// back when the slab is full.
    pub(crate) fn alloc(&mut self, v: V) -> Result<u32, V> {
        let i = self.free;
        if i == NIL {
            return Err(v);
        }
        self.free = self.next[i as usize];
        self.next[i as usize] = NIL;
        self.vals[i as usize] = Some(v);
        self.used += 1;
        Ok(i)
    }

    /// Frees node `i`, returning its value.
    pub(crate) fn release(&mut self, i: u32) -> V {
        let v = self.vals[i as usize]
            .take()
            .expect("release of a free node");
        self.next[i as usize] = self.free;
        self.free = i;
        self.used -= 1;
        v
    }

    /// The value of node `i`.
    #[inline]
    pub(crate) fn get(&self, i: u32) -> &V {
        self.vals[i as usize].as_ref().expect("read of a free node")
    }

    /// The value of node `i`, writable.
    #[inline]
    pub(crate) fn get_mut(&mut self, i: u32) -> &mut V {
        self.vals[i as usize]
            .as_mut()
            .expect("write of a free node")
    }

    /// The node after `i`.
    #[inline]
    pub(crate) fn next(&self, i: u32) -> u32 {
        self.next[i as usize]
    }

    /// Links `n` after `i`.
    #[inline]
    pub(crate) fn set_next(&mut self, i: u32, n: u32) {
        self.next[i as usize] = n;
    }

    /// Frees every node of the list starting at `head`.
    pub(crate) fn release_list(&mut self, mut head: u32) {
        while head != NIL {
            let n = self.next(head);
            self.release(head);
            head = n;
        }
    }

    /// Nodes in use.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Nodes free.
    pub(crate) fn available(&self) -> usize {
        self.vals.len() - self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_until_full_then_reuse_freed_nodes() {
        let mut s = NodeSlab::new(2);
        let a = s.alloc("a").unwrap();
        let b = s.alloc("b").unwrap();
        assert_eq!(s.alloc("c"), Err("c"));
        s.set_next(a, b);
        assert_eq!(*s.get(s.next(a)), "b");
        s.release_list(a);
        assert_eq!(s.used(), 0);
        let c = s.alloc("c").unwrap();
        assert_eq!(*s.get(c), "c");
        assert_eq!(s.next(c), NIL);
    }
}
