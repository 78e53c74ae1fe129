//! On-disk encoding of the metadata file: 4 KiB pages, each sealed with a
//! typed checksum, its own page number and the generation that wrote it.

use super::PoolError;

/// Size of one metadata page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of the common page header.
pub const HEADER_SIZE: usize = 32;
/// Magic number of a pool superblock ("STRATAPL").
pub const MAGIC: u64 = 0x5354_5241_5441_504c;
/// On-disk format version.
pub const VERSION: u32 = 1;
/// Entries (key + value, 16 bytes) that fit in one B-tree node.
pub const NODE_MAX: usize = 252;
/// Refcount entries (u32) held by one refcount page.
pub const RC_PER_PAGE: usize = (PAGE_SIZE - HEADER_SIZE) / 4;
const NODE_BODY: usize = HEADER_SIZE + 16;

/// The type of a metadata page; each type mixes its own salt into the
/// checksum so that a page of one type never validates as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageType {
    Superblock = 1,
    Refcount = 2,
    Node = 3,
    Record = 4,
}

impl PageType {
    fn salt(self) -> u32 {
        match self {
            PageType::Superblock => 0x5b1c_0de1,
            PageType::Refcount => 0x2ec0_0a7e,
            PageType::Node => 0x70de_b7ee,
            PageType::Record => 0x0dec_0ded,
        }
    }
    fn from_u32(v: u32) -> Option<PageType> {
        Some(match v {
            1 => PageType::Superblock,
            2 => PageType::Refcount,
            3 => PageType::Node,
            4 => PageType::Record,
            _ => return None,
        })
    }
}

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

/// CRC-32C (Castagnoli), as used by iSCSI, ext4 and btrfs.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

pub fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

pub fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the header of `buf` and its checksum; call after the body is final.
pub fn seal(buf: &mut [u8], ptype: PageType, pageno: u64, generation: u64) {
    put_u32(buf, 4, ptype as u32);
    put_u64(buf, 8, pageno);
    put_u64(buf, 16, generation);
    put_u64(buf, 24, 0);
    let csum = crc32c(&buf[4..PAGE_SIZE]) ^ ptype.salt();
    put_u32(buf, 0, csum);
}

/// Checks type, checksum and location of a page; returns its generation.
pub fn verify(buf: &[u8], ptype: PageType, pageno: u64) -> Result<u64, PoolError> {
    let found = get_u32(buf, 4);
    if PageType::from_u32(found) != Some(ptype) {
        return Err(PoolError::Corrupt(format!(
            "metadata page {pageno}: expected a {ptype:?} page, found type {found}"
        )));
    }
    let want = crc32c(&buf[4..PAGE_SIZE]) ^ ptype.salt();
    if get_u32(buf, 0) != want {
        return Err(PoolError::Corrupt(format!("metadata page {pageno}: checksum mismatch")));
    }
    let at = get_u64(buf, 8);
    if at != pageno {
        return Err(PoolError::Corrupt(format!("metadata page {pageno}: page claims to be page {at}")));
    }
    Ok(get_u64(buf, 16))
}

/// Which tree a node belongs to; it says what the leaf values point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeKind {
    /// dev_id -> record page.
    Devices = 1,
    /// virtual block -> data block.
    Mapping = 2,
}

/// A decoded B-tree node. Internal nodes hold `(lowest key of child, child
/// page)`; leaves hold `(key, value)`. Keys strictly increase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: TreeKind,
    pub internal: bool,
    pub keys: Vec<u64>,
    pub vals: Vec<u64>,
}

impl Node {
    pub fn new_leaf(kind: TreeKind) -> Node {
        Node { kind, internal: false, keys: Vec::new(), vals: Vec::new() }
    }

    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        put_u32(buf, HEADER_SIZE, self.keys.len() as u32);
        put_u32(buf, HEADER_SIZE + 4, if self.internal { 1 } else { 2 });
        put_u32(buf, HEADER_SIZE + 8, self.kind as u32);
        for (i, (k, v)) in self.keys.iter().zip(&self.vals).enumerate() {
            put_u64(buf, NODE_BODY + 8 * i, *k);
            put_u64(buf, NODE_BODY + 8 * NODE_MAX + 8 * i, *v);
        }
    }

    /// Decodes a node whose page has already been verified.
    pub fn decode(buf: &[u8], pageno: u64) -> Result<Node, PoolError> {
        let nr = get_u32(buf, HEADER_SIZE) as usize;
        let flags = get_u32(buf, HEADER_SIZE + 4);
        let kind = match get_u32(buf, HEADER_SIZE + 8) {
            1 => TreeKind::Devices,
            2 => TreeKind::Mapping,
            k => return Err(PoolError::Corrupt(format!("node {pageno}: unknown tree kind {k}"))),
        };
        if nr > NODE_MAX {
            return Err(PoolError::Corrupt(format!("node {pageno}: {nr} entries, at most {NODE_MAX} fit")));
        }
        let internal = match flags {
            1 => true,
            2 => false,
            f => return Err(PoolError::Corrupt(format!("node {pageno}: bad flags {f}"))),
        };
        let keys: Vec<u64> = (0..nr).map(|i| get_u64(buf, NODE_BODY + 8 * i)).collect();
        let vals = (0..nr).map(|i| get_u64(buf, NODE_BODY + 8 * NODE_MAX + 8 * i)).collect();
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PoolError::Corrupt(format!("node {pageno}: keys are not strictly increasing")));
        }
        Ok(Node { kind, internal, keys, vals })
    }
}

/// The state of one thin device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub dev_id: u64,
    /// Root page of the mapping tree, 0 for an empty device.
    pub mapping_root: u64,
    pub virtual_size: u64,
    pub mapped_blocks: u64,
    /// Device this one is a snapshot of, 0 for none.
    pub origin: u64,
    pub created_generation: u64,
    pub created_unix: u64,
}

impl Record {
    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        let b = HEADER_SIZE;
        put_u64(buf, b, self.dev_id);
        put_u64(buf, b + 8, self.mapping_root);
        put_u64(buf, b + 16, self.virtual_size);
        put_u64(buf, b + 24, self.mapped_blocks);
        put_u64(buf, b + 32, self.origin);
        put_u64(buf, b + 40, self.created_generation);
        put_u64(buf, b + 48, self.created_unix);
    }

    pub fn decode(buf: &[u8]) -> Record {
        let b = HEADER_SIZE;
        Record {
            dev_id: get_u64(buf, b),
            mapping_root: get_u64(buf, b + 8),
            virtual_size: get_u64(buf, b + 16),
            mapped_blocks: get_u64(buf, b + 24),
            origin: get_u64(buf, b + 32),
            created_generation: get_u64(buf, b + 40),
            created_unix: get_u64(buf, b + 48),
        }
    }
}

/// The superblock: the root of one committed generation. Two slots (pages 0
/// and 1) alternate; generation `g` lives in slot `g % 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub flags: u32,
    pub block_size: u64,
    pub data_blocks: u64,
    pub meta_pages: u64,
    pub meta_rc_start: u64,
    pub meta_rc_pages: u64,
    pub data_rc_start: u64,
    pub data_rc_pages: u64,
    pub node_start: u64,
    pub devices_root: u64,
    pub next_dev_id: u64,
    pub transaction_id: u64,
    pub base_dev: u64,
    pub base_size: u64,
    pub min_free_pct: u32,
}

impl Superblock {
    /// First page of the refcount region used by `generation`.
    pub fn meta_rc_region(&self, generation: u64) -> u64 {
        self.meta_rc_start + (generation % 2) * self.meta_rc_pages
    }
    pub fn data_rc_region(&self, generation: u64) -> u64 {
        self.data_rc_start + (generation % 2) * self.data_rc_pages
    }
    pub fn node_pages(&self) -> u64 {
        self.meta_pages - self.node_start
    }

    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        let b = HEADER_SIZE;
        put_u64(buf, b, MAGIC);
        put_u32(buf, b + 8, VERSION);
        put_u32(buf, b + 12, self.flags);
        put_u64(buf, b + 16, self.block_size);
        put_u64(buf, b + 24, self.data_blocks);
        put_u64(buf, b + 32, self.meta_pages);
        put_u64(buf, b + 40, self.meta_rc_start);
        put_u64(buf, b + 48, self.meta_rc_pages);
        put_u64(buf, b + 56, self.data_rc_start);
        put_u64(buf, b + 64, self.data_rc_pages);
        put_u64(buf, b + 72, self.node_start);
        put_u64(buf, b + 80, self.devices_root);
        put_u64(buf, b + 88, self.next_dev_id);
        put_u64(buf, b + 96, self.transaction_id);
        put_u64(buf, b + 104, self.base_dev);
        put_u64(buf, b + 112, self.base_size);
        put_u32(buf, b + 120, self.min_free_pct);
    }

    /// Decodes and sanity-checks a verified superblock page.
    pub fn decode(buf: &[u8], generation: u64) -> Result<Superblock, PoolError> {
        let b = HEADER_SIZE;
        if get_u64(buf, b) != MAGIC {
            return Err(PoolError::Corrupt("superblock: bad magic".into()));
        }
        let version = get_u32(buf, b + 8);
        if version != VERSION {
            return Err(PoolError::Corrupt(format!("superblock: unsupported version {version}")));
        }
        let sb = Superblock {
            generation,
            flags: get_u32(buf, b + 12),
            block_size: get_u64(buf, b + 16),
            data_blocks: get_u64(buf, b + 24),
            meta_pages: get_u64(buf, b + 32),
            meta_rc_start: get_u64(buf, b + 40),
            meta_rc_pages: get_u64(buf, b + 48),
            data_rc_start: get_u64(buf, b + 56),
            data_rc_pages: get_u64(buf, b + 64),
            node_start: get_u64(buf, b + 72),
            devices_root: get_u64(buf, b + 80),
            next_dev_id: get_u64(buf, b + 88),
            transaction_id: get_u64(buf, b + 96),
            base_dev: get_u64(buf, b + 104),
            base_size: get_u64(buf, b + 112),
            min_free_pct: get_u32(buf, b + 120),
        };
        let layout_ok = sb.block_size >= 65536
            && sb.block_size % 65536 == 0
            && sb.meta_rc_start == 2
            && sb.data_rc_start == sb.meta_rc_start + 2 * sb.meta_rc_pages
            && sb.node_start == sb.data_rc_start + 2 * sb.data_rc_pages
            && sb.node_start < sb.meta_pages
            && sb.meta_rc_pages * RC_PER_PAGE as u64 >= sb.meta_pages - sb.node_start
            && sb.data_rc_pages * RC_PER_PAGE as u64 >= sb.data_blocks
            && (sb.devices_root == 0 || (sb.node_start..sb.meta_pages).contains(&sb.devices_root));
        if !layout_ok {
            return Err(PoolError::Corrupt("superblock: inconsistent layout".into()));
        }
        Ok(sb)
    }
}

/// Most pages a superblock lists as written by its commit. A commit that
/// writes more syncs them before writing the superblock instead.
pub const MAX_LISTED: usize = 480;
/// Where the list starts in a superblock page: a u32 count, then one u64
/// per page (page number, page type in the top byte).
const LIST_AT: usize = HEADER_SIZE + 128;

/// Records in an encoded superblock (before sealing) the pages its commit
/// wrote, so that a superblock that reached the disk without all of them is
/// recognised as torn. At most [`MAX_LISTED`] entries are taken.
pub fn encode_written(buf: &mut [u8], pages: &[(u64, PageType)]) {
    let pages = &pages[..pages.len().min(MAX_LISTED)];
    put_u32(buf, LIST_AT, pages.len() as u32);
    for (k, &(p, t)) in pages.iter().enumerate() {
        put_u64(buf, LIST_AT + 8 + 8 * k, p | ((t as u64) << 56));
    }
}

/// The pages a verified superblock page lists as written by its commit
/// (empty for a commit that synced its pages before its superblock).
pub fn decode_written(buf: &[u8]) -> Result<Vec<(u64, PageType)>, PoolError> {
    let n = get_u32(buf, LIST_AT) as usize;
    if n > MAX_LISTED {
        return Err(PoolError::Corrupt(format!("superblock: {n} listed pages, more than {MAX_LISTED}")));
    }
    (0..n)
        .map(|k| {
            let v = get_u64(buf, LIST_AT + 8 + 8 * k);
            let t = PageType::from_u32((v >> 56) as u32)
                .ok_or_else(|| PoolError::Corrupt(format!("superblock: listed page {k} has a bad type")))?;
            Ok((v & ((1 << 56) - 1), t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn node_round_trip_and_corruption_detected() {
        let node = Node { kind: TreeKind::Mapping, internal: false, keys: vec![1, 5, 9], vals: vec![10, 50, 90] };
        let mut buf = vec![0u8; PAGE_SIZE];
        node.encode(&mut buf);
        seal(&mut buf, PageType::Node, 7, 3);
        assert_eq!(verify(&buf, PageType::Node, 7).unwrap(), 3);
        assert_eq!(Node::decode(&buf, 7).unwrap(), node);
        assert!(verify(&buf, PageType::Node, 8).is_err(), "misplaced page accepted");
        assert!(verify(&buf, PageType::Record, 7).is_err(), "wrong type accepted");
        buf[100] ^= 1;
        assert!(verify(&buf, PageType::Node, 7).is_err(), "bit flip accepted");
    }
}
