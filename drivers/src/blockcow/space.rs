//! Reference counts of metadata pages and data blocks, with the bookkeeping
//! a transaction needs: what the last commit said, what was freed (and so may
//! not be reused before the next commit), and which refcount pages changed.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::page::{get_u32, put_u32, RC_PER_PAGE};
use super::PoolError;

/// One array of u32 reference counts (0 = free).
#[derive(Debug)]
pub struct SpaceMap {
    counts: Vec<u32>,
    /// Counts as of the last commit, for entries changed since.
    committed: HashMap<u64, u32>,
    /// Entries that went from shared (>= 2) to fewer references in this
    /// transaction: still possibly shared in the committed generation.
    unshared: HashSet<u64>,
    /// Entries that reached zero in this transaction.
    freed: HashSet<u64>,
    dirty_cur: BTreeSet<u64>,
    dirty_prev: BTreeSet<u64>,
    used: u64,
    cursor: u64,
}

impl SpaceMap {
    /// A map loaded from committed counts; every refcount page is scheduled
    /// for writing at the next commit (the other region may be stale).
    pub fn from_counts(counts: Vec<u32>) -> SpaceMap {
        let used = counts.iter().filter(|&&c| c != 0).count() as u64;
        let pages = (counts.len() as u64).div_ceil(RC_PER_PAGE as u64);
        SpaceMap {
            counts,
            committed: HashMap::new(),
            unshared: HashSet::new(),
            freed: HashSet::new(),
            dirty_cur: BTreeSet::new(),
            dirty_prev: (0..pages).collect(),
            used,
            cursor: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.counts.len() as u64
    }

    pub fn get(&self, i: u64) -> u32 {
        self.counts[i as usize]
    }

    /// The count as of the last commit.
    pub fn committed(&self, i: u64) -> u32 {
        self.committed.get(&i).copied().unwrap_or(self.counts[i as usize])
    }

    /// Whether the entry is, or may have been in the last commit, shared.
    pub fn maybe_shared(&self, i: u64) -> bool {
        self.get(i) > 1 || self.committed(i) > 1 || self.unshared.contains(&i)
    }

    /// Entries in use (count > 0).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Entries that can be allocated now (free and not freed in this transaction).
    pub fn allocatable(&self) -> u64 {
        self.len() - self.used - self.freed.len() as u64
    }

    fn set(&mut self, i: u64, v: u32) {
        let old = self.counts[i as usize];
        self.committed.entry(i).or_insert(old);
        if old >= 2 && v < old {
            self.unshared.insert(i);
        }
        match (old, v) {
            (0, v) if v > 0 => self.used += 1,
            (o, 0) if o > 0 => {
                self.used -= 1;
                self.freed.insert(i);
            }
            _ => {}
        }
        self.counts[i as usize] = v;
        self.dirty_cur.insert(i / RC_PER_PAGE as u64);
    }

    pub fn inc(&mut self, i: u64, what: &str) -> Result<(), PoolError> {
        let c = self.get(i);
        if c == 0 {
            return Err(PoolError::Corrupt(format!("{what} {i}: reference to a free entry")));
        }
        let n = c
            .checked_add(1)
            .ok_or_else(|| PoolError::Corrupt(format!("{what} {i}: reference count overflow")))?;
        self.set(i, n);
        Ok(())
    }

    /// Drops one reference; returns the new count.
    pub fn dec(&mut self, i: u64, what: &str) -> Result<u32, PoolError> {
        let c = self.get(i);
        if c == 0 {
            return Err(PoolError::Corrupt(format!("{what} {i}: reference count underflow")));
        }
        self.set(i, c - 1);
        Ok(c - 1)
    }

    /// Takes a free entry that was not freed in this transaction.
    pub fn alloc(&mut self) -> Option<u64> {
        let n = self.len();
        if n == 0 || self.allocatable() == 0 {
            return None;
        }
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.counts[i as usize] == 0 && !self.freed.contains(&i) {
                self.set(i, 1);
                self.cursor = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    /// Refcount pages to write for the commit being made.
    pub fn pages_to_write(&self) -> Vec<u64> {
        self.dirty_cur.union(&self.dirty_prev).copied().collect()
    }

    /// Whether anything changed in this transaction.
    pub fn changed(&self) -> bool {
        !self.dirty_cur.is_empty()
    }

    /// Encodes refcount page `page` (entries `page * RC_PER_PAGE ..`) into `buf`.
    pub fn encode_page(&self, page: u64, buf: &mut [u8]) {
        buf.fill(0);
        let start = (page as usize * RC_PER_PAGE).min(self.counts.len());
        let end = (start + RC_PER_PAGE).min(self.counts.len());
        for (k, c) in self.counts[start..end].iter().enumerate() {
            put_u32(buf, super::page::HEADER_SIZE + 4 * k, *c);
        }
    }

    /// Ends the transaction after a successful commit; returns what was freed.
    pub fn end_transaction(&mut self) -> Vec<u64> {
        self.committed.clear();
        self.unshared.clear();
        self.dirty_prev = std::mem::take(&mut self.dirty_cur);
        let mut freed: Vec<u64> = self.freed.drain().collect();
        freed.sort_unstable();
        freed
    }
}

/// Decodes the counts of one refcount page into `out`.
pub fn decode_page(buf: &[u8], page: u64, out: &mut [u32]) {
    let start = (page as usize * RC_PER_PAGE).min(out.len());
    let end = (start + RC_PER_PAGE).min(out.len());
    for (k, slot) in out[start..end].iter_mut().enumerate() {
        *slot = get_u32(buf, super::page::HEADER_SIZE + 4 * k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_entries_wait_for_the_commit() {
        let mut m = SpaceMap::from_counts(vec![0; 3]);
        let a = m.alloc().unwrap();
        let b = m.alloc().unwrap();
        let c = m.alloc().unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(m.alloc().is_none());
        assert_eq!(m.dec(b, "block").unwrap(), 0);
        assert!(m.alloc().is_none(), "entry reused before the commit that freed it");
        assert_eq!(m.end_transaction(), vec![1]);
        assert_eq!(m.alloc(), Some(1));
    }

    #[test]
    fn sharing_is_remembered_until_commit() {
        let mut m = SpaceMap::from_counts(vec![1, 2]);
        assert!(m.maybe_shared(1));
        m.dec(1, "block").unwrap();
        assert!(m.maybe_shared(1), "committed count was 2");
        m.inc(0, "block").unwrap();
        m.dec(0, "block").unwrap();
        assert!(m.maybe_shared(0), "was shared within the transaction");
        m.end_transaction();
        assert!(!m.maybe_shared(0) && !m.maybe_shared(1));
        assert!(m.dec(0, "block").is_ok() && m.dec(0, "block").is_err());
    }
}
