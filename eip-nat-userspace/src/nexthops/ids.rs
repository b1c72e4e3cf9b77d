//! Next-hop ids: one `NEXTHOPS` slot per distinct neighbour in use, shared
//! by every address and route that hands packets to it, counted so that a
//! slot is freed when its last user goes.

use std::collections::HashMap;

use super::kernel::NextHopKey;

pub struct Ids {
    by_key: HashMap<NextHopKey, (u32, u32)>,
    /// (ifindex, neighbour) → ids: a neighbour's change touches its slots
    /// without a scan of all.
    by_neighbour: HashMap<(u32, std::net::Ipv4Addr), Vec<u32>>,
    keys: HashMap<u32, NextHopKey>,
    free: Vec<u32>,
    /// Freed in this change; reusable after [`Ids::settle`], so that an id
    /// an old map entry may still point at never means another neighbour
    /// before that entry is rewritten.
    freed: Vec<u32>,
    next: u32,
    capacity: u32,
}

impl Ids {
    /// Ids 1..capacity; 0 means "not programmed".
    pub fn new(capacity: u32) -> Self {
        Self {
            by_key: HashMap::new(),
            by_neighbour: HashMap::new(),
            keys: HashMap::new(),
            free: Vec::new(),
            freed: Vec::new(),
            next: 1,
            capacity,
        }
    }

    /// Takes over an id the running program already uses (an earlier
    /// agent's), with no users yet.
    pub fn adopt(&mut self, id: u32, key: NextHopKey) {
        if id == 0 || id >= self.capacity || self.by_key.contains_key(&key) {
            return;
        }
        self.by_key.insert(key, (id, 0));
        self.keys.insert(id, key);
        self.index(id, key);
        self.next = self.next.max(id + 1);
    }

    /// One more user of `key`: its id, and whether it is new (its slot must
    /// be written). None when every slot is taken.
    pub fn acquire(&mut self, key: NextHopKey) -> Option<(u32, bool)> {
        if let Some((id, refs)) = self.by_key.get_mut(&key) {
            *refs += 1;
            return Some((*id, false));
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.by_key.insert(key, (id, 1));
        self.keys.insert(id, key);
        self.index(id, key);
        Some((id, true))
    }

    /// One user fewer of `id`.
    pub fn release(&mut self, id: u32) {
        let Some(key) = self.keys.get(&id).copied() else {
            return;
        };
        if let Some((_, refs)) = self.by_key.get_mut(&key) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.forget(id, key);
            }
        }
    }

    fn index(&mut self, id: u32, key: NextHopKey) {
        self.by_neighbour
            .entry((key.ifindex, key.neighbour))
            .or_default()
            .push(id);
    }

    fn forget(&mut self, id: u32, key: NextHopKey) {
        self.by_key.remove(&key);
        self.keys.remove(&id);
        let n = (key.ifindex, key.neighbour);
        if let Some(ids) = self.by_neighbour.get_mut(&n) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_neighbour.remove(&n);
            }
        }
        self.freed.push(id);
    }

    /// The slots that hand packets to `neighbour` through `ifindex`.
    pub fn of_neighbour(
        &self,
        ifindex: u32,
        neighbour: std::net::Ipv4Addr,
    ) -> Vec<(u32, NextHopKey)> {
        self.by_neighbour
            .get(&(ifindex, neighbour))
            .into_iter()
            .flatten()
            .filter_map(|id| self.keys.get(id).map(|k| (*id, *k)))
            .collect()
    }

    /// Frees adopted ids nobody took, and returns every id freed since the
    /// last call, for the caller to clear, then makes them reusable.
    pub fn settle(&mut self) -> Vec<u32> {
        let unused: Vec<_> = self
            .by_key
            .iter()
            .filter(|(_, (_, refs))| *refs == 0)
            .map(|(k, (id, _))| (*id, *k))
            .collect();
        for (id, key) in unused {
            self.forget(id, key);
        }
        let freed = std::mem::take(&mut self.freed);
        self.free.extend(&freed);
        freed
    }

    pub fn key(&self, id: u32) -> Option<NextHopKey> {
        self.keys.get(&id).copied()
    }

    pub fn all(&self) -> impl Iterator<Item = (u32, NextHopKey)> + '_ {
        self.keys.iter().map(|(id, k)| (*id, *k))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(n: u8) -> NextHopKey {
        NextHopKey {
            ifindex: 3,
            neighbour: Ipv4Addr::new(10, 0, 0, n),
            route_mtu: 0,
        }
    }

    #[test]
    fn shared_counted_and_reused_only_after_settling() {
        let mut ids = Ids::new(3);
        assert_eq!(ids.acquire(key(1)), Some((1, true)));
        assert_eq!(ids.acquire(key(1)), Some((1, false)));
        assert_eq!(ids.acquire(key(2)), Some((2, true)));
        assert_eq!(ids.acquire(key(3)), None, "full");
        ids.release(1);
        assert_eq!(ids.key(1), Some(key(1)), "one user left");
        ids.release(1);
        assert_eq!(ids.acquire(key(3)), None, "freed, not yet settled");
        assert_eq!(ids.settle(), vec![1]);
        assert_eq!(ids.acquire(key(3)), Some((1, true)));
    }

    #[test]
    fn adopted_ids_are_kept_when_taken_and_freed_when_not() {
        let mut ids = Ids::new(10);
        ids.adopt(7, key(1));
        ids.adopt(8, key(2));
        assert_eq!(ids.acquire(key(1)), Some((7, false)));
        assert_eq!(ids.settle(), vec![8]);
        assert_eq!(ids.acquire(key(3)), Some((8, true)));
        assert_eq!(ids.acquire(key(4)), Some((9, true)));
    }
}
