//! The audit log: every state change a node makes is appended, in the same atomic
//! batch as the change itself, to a hash chain. Each entry's hash covers the
//! previous hash and the entry, and the chain head is kept apart, so an edited,
//! removed or truncated entry is found and named by [`verify`].
//!
//! Entries older than the node's audit retention are removed from the start of
//! the chain ([`crate::state::State::prune_audit`]): the chain then starts from
//! an anchor (the last removed entry's number and hash, [`base_key`]) and the
//! removal is itself an entry, `audit-pruned`, naming that anchor. [`verify`]
//! starts from the anchor and requires the newest `audit-pruned` entry to name
//! it, so moving the anchor to hide removed entries breaks the chain.
//!
//! The entries of one batch are stored together, in blocks of up to
//! [`BLOCK_MAX`] under the number of their last ([`append`]), and the index of a document's entries names the
//! blocks that hold them: a node writes a handful of keys per batch for its
//! audit instead of two per entry (the audit was 46% of the writes a hub made
//! per document, BENCHMARKS.md). Entries stored one per key, as before blocks,
//! are read as blocks of one.

use std::ops::ControlFlow;

use prost::Message;
use ring::digest::{SHA256, digest};
use truc_store::{
    Batch, Space, Store, StoreError,
    keys::{Key, trailing_u64},
    record::{self, AuditBlock, AuditEntry},
};

/// What a state change records, before it gets its place in the chain.
#[derive(Debug, Clone)]
pub struct Draft {
    pub event: String,
    pub doc_id: String,
    pub from: String,
    pub detail: String,
}

/// Meta key of the chain head: `[seq u64 BE][hash 32]`.
pub fn head_key() -> Vec<u8> {
    Key::new().str("audit-head").build()
}

/// Meta key of the chain's start after pruning: `[seq u64 BE][hash 32]` of
/// the last removed entry. Absent: the chain starts at entry 1.
pub fn base_key() -> Vec<u8> {
    Key::new().str("audit-base").build()
}

/// The event of the entry that records a pruning.
pub const PRUNED: &str = "audit-pruned";

/// How an `audit-pruned` entry names the anchor; [`verify`] looks for it.
pub fn anchor_text(seq: u64, hash: &[u8]) -> String {
    format!(
        "chain now starts after entry {seq} (hash {})",
        hex::encode(hash)
    )
}

/// Key of the block whose last entry is `seq` (or of entry `seq` stored alone).
pub fn entry_key(seq: u64) -> Vec<u8> {
    Key::new().u64(seq).build()
}

/// Index key: the block under `seq` holds entries about `doc_id`.
pub fn index_key(doc_id: &str, seq: u64) -> Vec<u8> {
    Key::new().str(doc_id).u64(seq).build()
}

/// Entries per block at most. A batch that acknowledges or releases thousands
/// of documents at once makes several blocks, so a stored value stays a few
/// kilobytes (sled rewrote a page of up to 16 values whole; redb copies a
/// value over a page into pages of its own).
pub const BLOCK_MAX: usize = 64;

/// Seals `drafts` after the head (`seq`, `prev`) and puts them in `batch` as
/// blocks of at most [`BLOCK_MAX`] entries, with one index key per document a
/// block names. Returns the new head.
pub fn append(
    batch: &mut Batch,
    (mut seq, mut prev): (u64, [u8; 32]),
    at_ms: i64,
    drafts: Vec<Draft>,
) -> (u64, [u8; 32]) {
    let mut drafts = drafts.into_iter().peekable();
    while drafts.peek().is_some() {
        let mut entries = Vec::with_capacity(BLOCK_MAX.min(drafts.len()));
        for d in drafts.by_ref().take(BLOCK_MAX) {
            seq += 1;
            let e = seal(prev, seq, at_ms, d);
            prev.copy_from_slice(&e.hash);
            entries.push(e);
        }
        for doc in docs_named(&entries) {
            batch.put(Space::AuditIndex, index_key(doc, seq), Vec::new());
        }
        batch.put(Space::Audit, entry_key(seq), encode_block(entries));
    }
    (seq, prev)
}

/// The documents a block's entries name, each once: the block has one index
/// key per document ([`index_key`] with the block's number), written by
/// [`append`] and removed with the block when it is pruned.
pub fn docs_named(entries: &[AuditEntry]) -> std::collections::BTreeSet<&str> {
    entries
        .iter()
        .map(|e| e.doc_id.as_str())
        .filter(|d| !d.is_empty())
        .collect()
}

/// One block's stored bytes: the entries with every `prev` but the first left
/// out (each is the hash just before it).
pub fn encode_block(mut entries: Vec<AuditEntry>) -> Vec<u8> {
    for e in entries.iter_mut().skip(1) {
        e.prev.clear();
    }
    record::encode(&AuditBlock { entries })
}

/// The entries stored under `key`, each with its `prev` back: a block, or one
/// entry stored alone as before blocks (its first field is a number, where a
/// block's is a message, so the two cannot be taken for each other).
pub fn decode_block(key: &[u8], bytes: &[u8]) -> Result<Vec<AuditEntry>, StoreError> {
    match record::decode::<AuditBlock>(Space::Audit, key, bytes) {
        Ok(AuditBlock { mut entries }) if !entries.is_empty() => {
            for i in 1..entries.len() {
                let prev = entries[i - 1].hash.clone();
                entries[i].prev = prev;
            }
            Ok(entries)
        }
        _ => record::decode::<AuditEntry>(Space::Audit, key, bytes).map(|e| vec![e]),
    }
}

/// The hash an entry must carry: SHA-256 of `prev` followed by the entry
/// encoded with an empty `hash`.
pub fn entry_hash(e: &AuditEntry) -> [u8; 32] {
    let mut unhashed = e.clone();
    unhashed.hash.clear();
    let mut input = e.prev.clone();
    input.extend_from_slice(&unhashed.encode_to_vec());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &input).as_ref());
    out
}

/// Chains a draft after `prev`.
pub fn seal(prev: [u8; 32], seq: u64, at_ms: i64, d: Draft) -> AuditEntry {
    let mut e = AuditEntry {
        seq,
        at_ms,
        event: d.event,
        doc_id: d.doc_id,
        from: d.from,
        detail: d.detail,
        prev: prev.to_vec(),
        hash: Vec::new(),
    };
    e.hash = entry_hash(&e).to_vec();
    e
}

/// The chain head: last sequence number and hash (0 and zeros when empty).
pub fn head(store: &dyn Store) -> Result<(u64, [u8; 32]), StoreError> {
    seq_and_hash(store, &head_key())
}

/// The chain's start: the last removed entry's number and hash (0 and zeros
/// when nothing was ever pruned).
pub fn base(store: &dyn Store) -> Result<(u64, [u8; 32]), StoreError> {
    seq_and_hash(store, &base_key())
}

/// A head or base record: absent is (0, zeros); anything but 40 bytes is a
/// corrupt record, not an empty chain (which would verify as intact and be
/// written over from entry 1).
fn seq_and_hash(store: &dyn Store, key: &[u8]) -> Result<(u64, [u8; 32]), StoreError> {
    match store.get(Space::Meta, key)? {
        Some(v) if v.len() == 40 => {
            let seq = trailing_u64(&v[..8]).unwrap_or(0);
            let mut h = [0u8; 32];
            h.copy_from_slice(&v[8..]);
            Ok((seq, h))
        }
        Some(v) => Err(StoreError::Corrupt {
            space: Space::Meta,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: format!("an audit chain mark is 40 bytes, this one {}", v.len()),
        }),
        None => Ok((0, [0u8; 32])),
    }
}

/// The last entry stored in the log, whatever the head says: its number and
/// hash (0 and zeros when there is none).
pub fn last_stored(store: &dyn Store) -> Result<(u64, [u8; 32]), StoreError> {
    let Some((k, v)) = store.last(Space::Audit, &[])? else {
        return Ok((0, [0u8; 32]));
    };
    let Some(last) = decode_block(&k, &v)?.pop() else {
        return Ok((0, [0u8; 32]));
    };
    let hash = <[u8; 32]>::try_from(last.hash.as_slice()).map_err(|_| StoreError::Corrupt {
        space: Space::Audit,
        key: hex::encode(&k),
        reason: format!("entry {} has a hash of {} bytes", last.seq, last.hash.len()),
    })?;
    Ok((last.seq, hash))
}

/// Where a node appends its next audit entry after: the head, or the last
/// stored entry if that is further (a head removed or moved back). Entries
/// are never written over; the mismatch is logged, and [`verify`] reports it
/// until the next entry writes the head again.
pub fn append_point(store: &dyn Store) -> Result<(u64, [u8; 32]), StoreError> {
    let head = head(store)?;
    let stored = last_stored(store)?;
    if stored.0 > head.0 {
        tracing::error!(
            head = head.0,
            last_stored = stored.0,
            "the audit log holds entries past its head (removed or moved back); going on after the last stored entry"
        );
        return Ok(stored);
    }
    Ok(head)
}

pub fn head_value(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(hash);
    v
}

/// Walks consecutive entries, each checked against the one before it: its
/// number, its link to the previous hash, its own hash. Used over a whole log
/// ([`verify`]) and over a segment of one (an archival package's proof).
#[derive(Debug, Clone)]
pub struct ChainWalk {
    prev: [u8; 32],
    next_seq: u64,
}

impl ChainWalk {
    /// From the first entry of a log.
    pub fn from_start() -> Self {
        Self::after(0, [0u8; 32])
    }

    /// From the entry after `seq`, whose hash is `hash` (a pruned log's anchor).
    pub fn after(seq: u64, hash: [u8; 32]) -> Self {
        Self {
            prev: hash,
            next_seq: seq + 1,
        }
    }

    /// From `first`, whose predecessor is not at hand: its own link is taken
    /// as given.
    pub fn from_entry(first: &AuditEntry) -> Self {
        let mut prev = [0u8; 32];
        if first.prev.len() == 32 {
            prev.copy_from_slice(&first.prev);
        }
        Self {
            prev,
            next_seq: first.seq,
        }
    }

    /// Checks that `e` is the next entry; it then becomes the previous one.
    pub fn step(&mut self, e: &AuditEntry) -> Result<(), String> {
        let seq = self.next_seq;
        if e.seq != seq {
            return Err(format!("entry {seq} says it is entry {}", e.seq));
        }
        if e.prev != self.prev {
            return Err(format!(
                "entry {seq} does not follow entry {}",
                seq.saturating_sub(1)
            ));
        }
        let h = entry_hash(e);
        if e.hash != h {
            return Err(format!(
                "entry {seq} was changed: its hash does not match its content"
            ));
        }
        self.prev = h;
        self.next_seq += 1;
        Ok(())
    }

    /// The hash of the last entry walked (the start's link before any).
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }

    /// The number of the last entry walked.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }
}

/// The result of checking a node's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries checked (those after the anchor).
    pub entries: u64,
    /// Entries up to this one were removed after the retention period (0: none).
    pub pruned_through: u64,
    /// The first entry that does not verify, and why.
    pub first_bad: Option<(u64, String)>,
    pub head: [u8; 32],
}

/// Walks the whole chain from its start (entry 1, or the anchor left by
/// pruning) up to the head read when it starts. A running node keeps appending
/// meanwhile (each batch writes entries and head together): entries after that
/// head are newer, not a fault, and are left to the next check. A pruning that
/// removes entries under the walk moves the anchor first: the walk starts again
/// from the new one.
pub fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let mut tries = 0;
    loop {
        // The anchor before the head: a pruning between the two reads is seen
        // as entries missing after a moved anchor, and walked again.
        let (base_seq, base_hash) = base(store)?;
        let (head_seq, head_hash) = head(store)?;
        let r = walk(store, (base_seq, base_hash), (head_seq, head_hash))?;
        if let Some((seq, _)) = &r.first_bad
            && tries < 3
            && base(store)?.0 >= *seq
        {
            tries += 1;
            continue;
        }
        return Ok(r);
    }
}

/// Calls `f` with every stored block of the chain after entry `after_seq`
/// (its key and bytes, the block holding entry `after_seq + 1` first), in
/// order, until `f` breaks or the log ends; returns what `f` broke with.
pub fn each_block_after<B>(
    store: &dyn Store,
    after_seq: u64,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<ControlFlow<B>, StoreError>,
) -> Result<Option<B>, StoreError> {
    let mut after = Some(entry_key(after_seq));
    loop {
        let rows = store.scan(Space::Audit, &[], after.as_deref(), 256)?;
        let Some((last, _)) = rows.last() else {
            return Ok(None);
        };
        after = Some(last.clone());
        for (k, v) in rows {
            if let ControlFlow::Break(b) = f(k, v)? {
                return Ok(Some(b));
            }
        }
    }
}

fn walk(
    store: &dyn Store,
    (base_seq, base_hash): (u64, [u8; 32]),
    (head_seq, head_hash): (u64, [u8; 32]),
) -> Result<Report, StoreError> {
    let mut walk = ChainWalk::after(base_seq, base_hash);
    let mut last_pruning: Option<String> = None;
    let bad = |seq: u64, why: String, walk: &ChainWalk| Report {
        entries: walk.last_seq() - base_seq,
        pruned_through: base_seq,
        first_bad: Some((seq, why)),
        head: walk.head(),
    };
    let found = each_block_after(store, base_seq, |k, v| {
        let first = walk.last_seq() + 1;
        if first > head_seq {
            return Ok(ControlFlow::Break(None));
        }
        let key_seq = trailing_u64(&k).unwrap_or(0);
        let entries = match decode_block(&k, &v) {
            Ok(e) => e,
            Err(err) => {
                let which = if key_seq == first {
                    format!("entry {first} is")
                } else {
                    format!("entries {first}–{key_seq} are")
                };
                let why = format!("{which} unreadable: {err}");
                return Ok(ControlFlow::Break(Some(bad(first, why, &walk))));
            }
        };
        let stored_last = entries.last().map_or(0, |e| e.seq);
        for e in entries {
            let expected = walk.last_seq() + 1;
            if expected > head_seq {
                return Ok(ControlFlow::Break(None));
            }
            if e.seq != expected {
                let why = format!("entry {expected} is missing (next is {})", e.seq);
                return Ok(ControlFlow::Break(Some(bad(expected, why, &walk))));
            }
            if let Err(why) = walk.step(&e) {
                return Ok(ControlFlow::Break(Some(bad(e.seq, why, &walk))));
            }
            if e.event == PRUNED {
                last_pruning = Some(e.detail);
            }
        }
        if stored_last < key_seq {
            let missing = stored_last + 1;
            let why = format!(
                "entry {missing} is missing (its block, stored under {key_seq}, ends at {stored_last})"
            );
            return Ok(ControlFlow::Break(Some(bad(missing, why, &walk))));
        }
        if stored_last > key_seq {
            let why =
                format!("entries up to {stored_last} are stored as if they ended at {key_seq}");
            return Ok(ControlFlow::Break(Some(bad(stored_last, why, &walk))));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(Some(report)) = found {
        return Ok(report);
    }
    // Entries past the head: appended since the head was read, or a head
    // moved back (or removed) to hide them. Only the second leaves the head
    // as it was.
    if store
        .scan(Space::Audit, &[], Some(&entry_key(head_seq)), 1)?
        .first()
        .is_some_and(|(k, v)| {
            trailing_u64(k).is_some_and(|s| s > head_seq)
                || decode_block(k, v).is_ok_and(|e| e.last().is_some_and(|e| e.seq > head_seq))
        })
        && head(store)? == (head_seq, head_hash)
    {
        let n = walk.last_seq();
        return Ok(bad(
            n.max(head_seq) + 1,
            format!(
                "the log holds entries past its head (entry {head_seq}): the head was moved back or removed"
            ),
            &walk,
        ));
    }
    let n = walk.last_seq();
    if n != head_seq {
        return Ok(bad(
            n + 1,
            format!("the log ends at entry {n} but its head says {head_seq}: entries were removed"),
            &walk,
        ));
    }
    if n > base_seq && walk.head() != head_hash {
        return Ok(Report {
            entries: n - 1 - base_seq,
            pruned_through: base_seq,
            first_bad: Some((
                n,
                format!("entry {n} does not match the recorded chain head"),
            )),
            head: walk.head(),
        });
    }
    if base_seq > 0
        && !last_pruning
            .as_deref()
            .is_some_and(|d| d.contains(&anchor_text(base_seq, &base_hash)))
    {
        return Ok(bad(
            base_seq + 1,
            format!(
                "the log starts after entry {base_seq}, but no {PRUNED} entry records that removal: entries were removed"
            ),
            &walk,
        ));
    }
    Ok(Report {
        entries: n - base_seq,
        pruned_through: base_seq,
        first_bad: None,
        head: walk.head(),
    })
}

#[cfg(test)]
mod tests {
    use truc_store::MemoryStore;

    use super::*;

    fn draft(n: u64) -> Draft {
        Draft {
            event: "stored".into(),
            doc_id: format!("d{}", n % 3),
            from: "000.00.00.G22".into(),
            detail: String::new(),
        }
    }

    /// Entries 1..=10 as a node writes them, one block per batch: 1 | 2–4 | 5–6 | 7–10.
    fn write(store: &MemoryStore) {
        let mut head = (0, [0u8; 32]);
        for n in [1, 3, 2, 4] {
            let mut b = Batch::new();
            let drafts = (head.0 + 1..=head.0 + n).map(draft).collect();
            head = append(&mut b, head, head.0 as i64, drafts);
            b.put(Space::Meta, head_key(), head_value(head.0, &head.1));
            store.apply(b).unwrap();
        }
    }

    /// Entries 1..=n one per key, as nodes stored them before blocks.
    fn write_one_per_key(store: &MemoryStore, n: u64) {
        let mut prev = [0u8; 32];
        let mut b = Batch::new();
        for seq in 1..=n {
            let e = seal(prev, seq, seq as i64, draft(seq));
            prev.copy_from_slice(&e.hash);
            b.put(Space::Audit, entry_key(seq), record::encode(&e));
        }
        b.put(Space::Meta, head_key(), head_value(n, &prev));
        store.apply(b).unwrap();
    }

    /// The key of the block holding entry `seq`, and its entries.
    fn block_of(store: &MemoryStore, seq: u64) -> (Vec<u8>, Vec<AuditEntry>) {
        let (k, v) = each_block_after(store, seq - 1, |k, v| Ok(ControlFlow::Break((k, v))))
            .unwrap()
            .unwrap();
        let entries = decode_block(&k, &v).unwrap();
        (k, entries)
    }

    /// Stores `entries` under `key` as a block, the way [`append`] does.
    fn put_block(store: &MemoryStore, key: Vec<u8>, entries: Vec<AuditEntry>) {
        let mut b = Batch::new();
        b.put(Space::Audit, key, encode_block(entries));
        store.apply(b).unwrap();
    }

    fn delete_block(store: &MemoryStore, seq: u64) {
        let mut b = Batch::new();
        b.delete(Space::Audit, entry_key(seq));
        store.apply(b).unwrap();
    }

    #[test]
    fn an_intact_chain_verifies() {
        let s = MemoryStore::new();
        write(&s);
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.first_bad), (10, None));
        assert_eq!(s.scan(Space::Audit, &[], None, 100).unwrap().len(), 4);
    }

    #[test]
    fn a_batch_writes_one_block_and_one_index_key_per_document() {
        let mut b = Batch::new();
        let (seq, _) = append(&mut b, (7, [1u8; 32]), 0, (8..=13).map(draft).collect());
        assert_eq!(seq, 13);
        let s = MemoryStore::new();
        s.apply(b).unwrap();
        let blocks = s.scan(Space::Audit, &[], None, 100).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0, entry_key(13));
        let entries = decode_block(&blocks[0].0, &blocks[0].1).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (8..=13).collect::<Vec<_>>()
        );
        // Each entry's link is back, though only the first one's was stored.
        let mut walk = ChainWalk::after(7, [1u8; 32]);
        for e in &entries {
            walk.step(e).unwrap();
        }
        let index: Vec<_> = s
            .scan(Space::AuditIndex, &[], None, 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            index,
            vec![
                index_key("d0", 13),
                index_key("d1", 13),
                index_key("d2", 13)
            ]
        );
    }

    #[test]
    fn a_large_batch_is_stored_as_several_bounded_blocks_that_verify() {
        let s = MemoryStore::new();
        let n = 2 * BLOCK_MAX as u64 + 5;
        let mut b = Batch::new();
        let head = append(&mut b, (0, [0u8; 32]), 0, (1..=n).map(draft).collect());
        assert_eq!(head.0, n);
        b.put(Space::Meta, head_key(), head_value(head.0, &head.1));
        s.apply(b).unwrap();
        let blocks = s.scan(Space::Audit, &[], None, 100).unwrap();
        let sizes: Vec<usize> = blocks
            .iter()
            .map(|(k, v)| decode_block(k, v).unwrap().len())
            .collect();
        assert_eq!(sizes, vec![BLOCK_MAX, BLOCK_MAX, 5]);
        // Each block is found by the index of the documents it names.
        let index = s.scan(Space::AuditIndex, &[], None, 100).unwrap();
        assert_eq!(index.len(), 3 * 3);
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.first_bad), (n, None));
    }

    #[test]
    fn entries_stored_one_per_key_still_verify_and_blocks_may_follow_them() {
        let s = MemoryStore::new();
        write_one_per_key(&s, 5);
        assert_eq!(
            verify(&s).unwrap(),
            Report {
                entries: 5,
                pruned_through: 0,
                first_bad: None,
                head: head(&s).unwrap().1
            }
        );
        let mut b = Batch::new();
        let head = append(&mut b, head(&s).unwrap(), 0, (6..=9).map(draft).collect());
        b.put(Space::Meta, head_key(), head_value(head.0, &head.1));
        s.apply(b).unwrap();
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.first_bad), (9, None));

        // And an edited one is still named.
        let k = entry_key(3);
        let mut e: AuditEntry =
            record::decode(Space::Audit, &k, &s.get(Space::Audit, &k).unwrap().unwrap()).unwrap();
        e.detail = "nothing happened".into();
        let mut b = Batch::new();
        b.put(Space::Audit, k, record::encode(&e));
        s.apply(b).unwrap();
        assert_eq!(verify(&s).unwrap().first_bad.unwrap().0, 3);
    }

    #[test]
    fn an_edited_entry_is_named_wherever_it_is_in_its_block() {
        for seq in [1, 3, 4, 7, 10] {
            let s = MemoryStore::new();
            write(&s);
            let (k, mut entries) = block_of(&s, seq);
            let e = entries.iter_mut().find(|e| e.seq == seq).unwrap();
            e.detail = "nothing happened".into();
            put_block(&s, k, entries);
            assert_eq!(verify(&s).unwrap().first_bad.unwrap().0, seq);
        }
        // Its hash made to match as well: the entry after it no longer follows.
        let s = MemoryStore::new();
        write(&s);
        let (k, mut entries) = block_of(&s, 3);
        entries[1].detail = "nothing happened".into();
        entries[1].hash = entry_hash(&entries[1]).to_vec();
        put_block(&s, k, entries);
        assert_eq!(verify(&s).unwrap().first_bad.unwrap().0, 4);
    }

    #[test]
    fn a_removed_entry_or_block_and_a_truncated_tail_are_named() {
        // A whole block: its first entry is named.
        let s = MemoryStore::new();
        write(&s);
        delete_block(&s, 6);
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 5, "{why}");

        // One entry taken out of the middle of its block.
        let s = MemoryStore::new();
        write(&s);
        let (k, mut entries) = block_of(&s, 8);
        entries.retain(|e| e.seq != 8);
        put_block(&s, k, entries);
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 8, "{why}");

        // The last entry of a block, the block left under its key.
        let s = MemoryStore::new();
        write(&s);
        let (k, mut entries) = block_of(&s, 4);
        entries.pop();
        put_block(&s, k, entries);
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 4, "{why}");

        // The newest block.
        let s = MemoryStore::new();
        write(&s);
        delete_block(&s, 10);
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 7, "{why}");
    }

    /// What a pruning leaves: the blocks through entry `through` gone, the
    /// anchor, and an entry naming it.
    fn prune(store: &MemoryStore, through: u64) {
        let (_, entries) = block_of(store, through);
        let last = entries.last().unwrap();
        assert_eq!(last.seq, through, "pruning removes whole blocks");
        let head_now = head(store).unwrap();
        let mut b = Batch::new();
        for (k, _) in store.scan(Space::Audit, &[], None, usize::MAX).unwrap() {
            if trailing_u64(&k).unwrap() <= through {
                b.delete(Space::Audit, k);
            }
        }
        let mut anchor = [0u8; 32];
        anchor.copy_from_slice(&last.hash);
        b.put(Space::Meta, base_key(), head_value(through, &anchor));
        let pruned = Draft {
            event: PRUNED.into(),
            doc_id: String::new(),
            from: String::new(),
            detail: anchor_text(through, &anchor),
        };
        let (seq, hash) = append(&mut b, head_now, 0, vec![pruned]);
        b.put(Space::Meta, head_key(), head_value(seq, &hash));
        store.apply(b).unwrap();
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_anchor_and_a_moved_anchor_is_named() {
        let s = MemoryStore::new();
        write(&s);
        prune(&s, 4);
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.pruned_through, r.first_bad), (7, 4, None));

        // Entries 5 and 6 removed as well, the anchor moved over them by hand:
        // no pruning entry names that anchor.
        let (_, five_six) = block_of(&s, 6);
        let mut anchor = [0u8; 32];
        anchor.copy_from_slice(&five_six[1].hash);
        let mut b = Batch::new();
        b.delete(Space::Audit, entry_key(6));
        b.put(Space::Meta, base_key(), head_value(6, &anchor));
        s.apply(b).unwrap();
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 7);
        assert!(why.contains("no audit-pruned entry"), "{why}");

        // Entries removed without moving the anchor: the first one is named.
        let s = MemoryStore::new();
        write(&s);
        prune(&s, 4);
        delete_block(&s, 6);
        assert_eq!(verify(&s).unwrap().first_bad.unwrap().0, 5);
    }

    /// Found by `truc chaos crash-before-ack`: the check at start-up ran while the
    /// node was already appending, read the head, then saw entries past it and
    /// called the chain broken.
    #[test]
    fn entries_appended_after_the_head_was_read_are_not_a_fault() {
        let s = MemoryStore::new();
        write(&s);
        let head_now = head(&s).unwrap();
        // What a writer adds between the checker reading the head and scanning
        // (its new head with it, as every writer does).
        let mut b = Batch::new();
        let (seq, hash) = append(&mut b, head_now, 11, vec![draft(11), draft(12)]);
        b.put(Space::Meta, head_key(), head_value(seq, &hash));
        s.apply(b).unwrap();
        let r = walk(&s, base(&s).unwrap(), head_now).unwrap();
        assert_eq!((r.entries, r.first_bad), (10, None));
        assert_eq!(r.head, head_now.1);
    }

    /// A head moved back, or removed, would hide every entry after it (and a
    /// node would number its next entries over them): it is named, and a node
    /// goes on after the last stored entry. A head that is not a head is a
    /// corrupt record, not an empty chain.
    #[test]
    fn a_head_moved_back_or_removed_is_named_and_nothing_is_written_over() {
        let s = MemoryStore::new();
        write(&s);
        let (_, four) = block_of(&s, 4);
        let four = four.iter().find(|e| e.seq == 4).unwrap();
        let mut b = Batch::new();
        b.put(
            Space::Meta,
            head_key(),
            head_value(4, &<[u8; 32]>::try_from(four.hash.as_slice()).unwrap()),
        );
        s.apply(b).unwrap();
        let (_, why) = verify(&s).unwrap().first_bad.unwrap();
        assert!(why.contains("past its head"), "{why}");
        assert_eq!(append_point(&s).unwrap().0, 10);

        let mut b = Batch::new();
        b.delete(Space::Meta, head_key());
        s.apply(b).unwrap();
        let (_, why) = verify(&s).unwrap().first_bad.unwrap();
        assert!(why.contains("past its head"), "{why}");
        assert_eq!(append_point(&s).unwrap().0, 10);

        let mut b = Batch::new();
        b.put(Space::Meta, head_key(), vec![0; 8]);
        s.apply(b).unwrap();
        assert!(matches!(verify(&s), Err(StoreError::Corrupt { .. })));
        assert!(append_point(&s).is_err());
    }
}
