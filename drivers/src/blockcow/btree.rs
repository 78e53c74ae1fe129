//! Copy-on-write B+tree over metadata pages (u64 keys, u64 values).
//!
//! Every modification first *shadows* the pages on its root-to-leaf path: a
//! page created in the current transaction and referenced once is changed in
//! place; any other page is copied to a fresh page. Copying a page that is
//! referenced more than once (shared with a snapshot) adds one reference to
//! each of its children, so sharing is undone lazily, one path at a time.

use std::sync::Arc;

use super::page::{Node, TreeKind, NODE_MAX};
use super::pool::Pool;
use super::PoolError;

/// Index of the child of an internal node that may hold `key`.
pub fn child_index(keys: &[u64], key: u64) -> usize {
    match keys.binary_search(&key) {
        Ok(i) => i,
        Err(0) => 0,
        Err(i) => i - 1,
    }
}

impl Pool {
    /// Looks `key` up in the tree rooted at `root` (0 = empty tree).
    pub(super) fn tree_lookup(&mut self, root: u64, key: u64) -> Result<Option<u64>, PoolError> {
        let mut p = root;
        if p == 0 {
            return Ok(None);
        }
        loop {
            let node = self.node(p)?;
            if node.internal {
                if node.keys.is_empty() || key < node.keys[0] {
                    return Ok(None);
                }
                p = node.vals[child_index(&node.keys, key)];
            } else {
                return Ok(node.keys.binary_search(&key).ok().map(|i| node.vals[i]));
            }
        }
    }

    /// Returns a page holding the same node as `p` that may be modified in
    /// place, taking over `p`'s reference.
    pub(super) fn shadow(&mut self, p: u64) -> Result<u64, PoolError> {
        let refs = self.meta_refs(p);
        if refs == 1 && self.new_pages.contains(&p) {
            return Ok(p);
        }
        let node = self.node(p)?;
        let tainted = refs > 1 || self.page_maybe_shared(p);
        let q = self.alloc_page()?;
        if refs > 1 {
            self.inc_children(&node)?;
            self.dec_page(p)?;
        } else {
            self.release_page(p)?;
        }
        if tainted {
            self.tainted.insert(q);
        }
        self.put_node(q, (*node).clone());
        Ok(q)
    }

    /// Inserts or replaces `key -> val`; returns the new root.
    pub(super) fn tree_insert(&mut self, root: u64, kind: TreeKind, key: u64, val: u64) -> Result<u64, PoolError> {
        if root == 0 {
            let p = self.alloc_page()?;
            self.put_node(p, Node { kind, internal: false, keys: vec![key], vals: vec![val] });
            return Ok(p);
        }
        let (p, split) = self.insert_rec(root, key, val)?;
        match split {
            None => Ok(p),
            Some((split_key, right)) => {
                let low = self.node(p)?.keys[0];
                let r = self.alloc_page()?;
                self.put_node(r, Node { kind, internal: true, keys: vec![low, split_key], vals: vec![p, right] });
                Ok(r)
            }
        }
    }

    fn insert_rec(&mut self, page: u64, key: u64, val: u64) -> Result<(u64, Option<(u64, u64)>), PoolError> {
        let p = self.shadow(page)?;
        let mut node = (*self.node(p)?).clone();
        if node.internal {
            let i = child_index(&node.keys, key);
            if key < node.keys[0] {
                node.keys[0] = key;
            }
            let (c, split) = self.insert_rec(node.vals[i], key, val)?;
            node.vals[i] = c;
            if let Some((k, r)) = split {
                node.keys.insert(i + 1, k);
                node.vals.insert(i + 1, r);
            }
        } else {
            match node.keys.binary_search(&key) {
                Ok(i) => node.vals[i] = val,
                Err(i) => {
                    node.keys.insert(i, key);
                    node.vals.insert(i, val);
                }
            }
        }
        let mut split = None;
        if node.keys.len() > NODE_MAX {
            let mid = node.keys.len() / 2;
            let right = Node {
                kind: node.kind,
                internal: node.internal,
                keys: node.keys.split_off(mid),
                vals: node.vals.split_off(mid),
            };
            let r = self.alloc_page()?;
            if self.tainted.contains(&p) {
                self.tainted.insert(r);
            }
            split = Some((right.keys[0], r));
            self.put_node(r, right);
        }
        self.put_node(p, node);
        Ok((p, split))
    }

    /// Removes `key`; returns the new root and the removed value.
    pub(super) fn tree_remove(&mut self, root: u64, key: u64) -> Result<(u64, Option<u64>), PoolError> {
        if self.tree_lookup(root, key)?.is_none() {
            return Ok((root, None));
        }
        let (mut p, val, empty) = self.remove_rec(root, key)?;
        if empty {
            self.release_page(p)?;
            return Ok((0, val));
        }
        // A root with a single child hands its reference over to that child.
        loop {
            let node = self.node(p)?;
            if !(node.internal && node.keys.len() == 1) {
                break;
            }
            self.release_page(p)?;
            p = node.vals[0];
        }
        Ok((p, val))
    }

    fn remove_rec(&mut self, page: u64, key: u64) -> Result<(u64, Option<u64>, bool), PoolError> {
        let p = self.shadow(page)?;
        let mut node = (*self.node(p)?).clone();
        let mut val = None;
        if node.internal {
            let i = child_index(&node.keys, key);
            let (c, v, empty) = self.remove_rec(node.vals[i], key)?;
            val = v;
            if empty {
                self.release_page(c)?;
                node.keys.remove(i);
                node.vals.remove(i);
            } else {
                node.vals[i] = c;
            }
        } else if let Ok(i) = node.keys.binary_search(&key) {
            node.keys.remove(i);
            val = Some(node.vals.remove(i));
        }
        let empty = node.keys.is_empty();
        self.put_node(p, node);
        Ok((p, val, empty))
    }

    /// Adds one reference to everything `node` points at.
    pub(super) fn inc_children(&mut self, node: &Node) -> Result<(), PoolError> {
        for &v in &node.vals {
            match (node.internal, node.kind) {
                (true, _) => self.inc_page(v)?,
                (false, TreeKind::Mapping) => self.inc_block(v)?,
                (false, TreeKind::Devices) => {
                    return Err(PoolError::Corrupt("the devices tree is never shared".into()))
                }
            }
        }
        Ok(())
    }

    /// Drops one reference to node page `p`, releasing what it points at when
    /// the last reference goes.
    pub(super) fn dec_page(&mut self, p: u64) -> Result<(), PoolError> {
        let mut stack = vec![p];
        while let Some(p) = stack.pop() {
            if self.meta_refs(p) > 1 {
                self.meta_dec(p)?;
                continue;
            }
            let node: Arc<Node> = self.node(p)?;
            self.release_page(p)?;
            for &v in &node.vals {
                match (node.internal, node.kind) {
                    (true, _) => stack.push(v),
                    (false, TreeKind::Mapping) => self.dec_block(v)?,
                    (false, TreeKind::Devices) => {
                        return Err(PoolError::Corrupt("device records are released by delete".into()))
                    }
                }
            }
        }
        Ok(())
    }
}
