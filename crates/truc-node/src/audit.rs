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

use prost::Message;
use ring::digest::{SHA256, digest};
use truc_store::{
    Space, Store, StoreError,
    keys::{Key, trailing_u64},
    record::{self, AuditEntry},
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

pub fn entry_key(seq: u64) -> Vec<u8> {
    Key::new().u64(seq).build()
}

pub fn index_key(doc_id: &str, seq: u64) -> Vec<u8> {
    Key::new().str(doc_id).u64(seq).build()
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

fn seq_and_hash(store: &dyn Store, key: &[u8]) -> Result<(u64, [u8; 32]), StoreError> {
    match store.get(Space::Meta, key)? {
        Some(v) if v.len() == 40 => {
            let seq = trailing_u64(&v[..8]).unwrap_or(0);
            let mut h = [0u8; 32];
            h.copy_from_slice(&v[8..]);
            Ok((seq, h))
        }
        _ => Ok((0, [0u8; 32])),
    }
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

fn walk(
    store: &dyn Store,
    (base_seq, base_hash): (u64, [u8; 32]),
    (head_seq, head_hash): (u64, [u8; 32]),
) -> Result<Report, StoreError> {
    let mut walk = ChainWalk::after(base_seq, base_hash);
    let mut after: Option<Vec<u8>> = Some(entry_key(base_seq));
    let mut last_pruning: Option<String> = None;
    let bad = |seq: u64, why: String, walk: &ChainWalk| Report {
        entries: walk.last_seq() - base_seq,
        pruned_through: base_seq,
        first_bad: Some((seq, why)),
        head: walk.head(),
    };
    while walk.last_seq() < head_seq {
        let rows = store.scan(Space::Audit, &[], after.as_deref(), 1024)?;
        let Some((last, _)) = rows.last() else { break };
        after = Some(last.clone());
        for (k, v) in rows {
            let expected = walk.last_seq() + 1;
            if expected > head_seq {
                break;
            }
            let seq = trailing_u64(&k).unwrap_or(0);
            if seq != expected {
                return Ok(bad(
                    expected,
                    format!("entry {expected} is missing (next is {seq})"),
                    &walk,
                ));
            }
            let e: AuditEntry = match record::decode(Space::Audit, &k, &v) {
                Ok(e) => e,
                Err(err) => {
                    return Ok(bad(seq, format!("entry {seq} is unreadable: {err}"), &walk));
                }
            };
            if let Err(why) = walk.step(&e) {
                return Ok(bad(seq, why, &walk));
            }
            if e.event == PRUNED {
                last_pruning = Some(e.detail);
            }
        }
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
    use truc_store::{Batch, MemoryStore};

    use super::*;

    fn write(store: &MemoryStore, n: u64) {
        let mut prev = [0u8; 32];
        let mut b = Batch::new();
        for seq in 1..=n {
            let e = seal(
                prev,
                seq,
                seq as i64,
                Draft {
                    event: "stored".into(),
                    doc_id: format!("d{seq}"),
                    from: "000.00.00.G22".into(),
                    detail: String::new(),
                },
            );
            prev.copy_from_slice(&e.hash);
            b.put(Space::Audit, entry_key(seq), record::encode(&e));
        }
        b.put(Space::Meta, head_key(), head_value(n, &prev));
        store.apply(b).unwrap();
    }

    #[test]
    fn an_intact_chain_verifies() {
        let s = MemoryStore::new();
        write(&s, 10);
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.first_bad), (10, None));
    }

    #[test]
    fn an_edited_entry_is_named() {
        let s = MemoryStore::new();
        write(&s, 10);
        let k = entry_key(4);
        let mut e: AuditEntry =
            record::decode(Space::Audit, &k, &s.get(Space::Audit, &k).unwrap().unwrap()).unwrap();
        e.detail = "nothing happened".into();
        let mut b = Batch::new();
        b.put(Space::Audit, k, record::encode(&e));
        s.apply(b).unwrap();
        assert_eq!(verify(&s).unwrap().first_bad.unwrap().0, 4);
    }

    #[test]
    fn a_removed_entry_and_a_truncated_tail_are_named() {
        let s = MemoryStore::new();
        write(&s, 10);
        let mut b = Batch::new();
        b.delete(Space::Audit, entry_key(6));
        s.apply(b).unwrap();
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 6, "{why}");

        let s = MemoryStore::new();
        write(&s, 10);
        let mut b = Batch::new();
        b.delete(Space::Audit, entry_key(10));
        s.apply(b).unwrap();
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 10, "{why}");
    }

    /// What a pruning leaves: entries 1..=through gone, the anchor, and an
    /// entry naming it.
    fn prune(store: &MemoryStore, through: u64) {
        let key = entry_key(through);
        let last: AuditEntry = record::decode(
            Space::Audit,
            &key,
            &store.get(Space::Audit, &key).unwrap().unwrap(),
        )
        .unwrap();
        let (head_seq, head_hash) = head(store).unwrap();
        let mut b = Batch::new();
        for seq in 1..=through {
            b.delete(Space::Audit, entry_key(seq));
        }
        let mut anchor = [0u8; 32];
        anchor.copy_from_slice(&last.hash);
        b.put(Space::Meta, base_key(), head_value(through, &anchor));
        let e = seal(
            head_hash,
            head_seq + 1,
            0,
            Draft {
                event: PRUNED.into(),
                doc_id: String::new(),
                from: String::new(),
                detail: anchor_text(through, &anchor),
            },
        );
        b.put(Space::Audit, entry_key(head_seq + 1), record::encode(&e));
        let mut h = [0u8; 32];
        h.copy_from_slice(&e.hash);
        b.put(Space::Meta, head_key(), head_value(head_seq + 1, &h));
        store.apply(b).unwrap();
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_anchor_and_a_moved_anchor_is_named() {
        let s = MemoryStore::new();
        write(&s, 10);
        prune(&s, 4);
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.pruned_through, r.first_bad), (7, 4, None));

        // Entries 5 and 6 removed as well, the anchor moved over them by hand:
        // no pruning entry names that anchor.
        let k6 = entry_key(6);
        let six: AuditEntry = record::decode(
            Space::Audit,
            &k6,
            &s.get(Space::Audit, &k6).unwrap().unwrap(),
        )
        .unwrap();
        let mut anchor = [0u8; 32];
        anchor.copy_from_slice(&six.hash);
        let mut b = Batch::new();
        b.delete(Space::Audit, entry_key(5));
        b.delete(Space::Audit, k6);
        b.put(Space::Meta, base_key(), head_value(6, &anchor));
        s.apply(b).unwrap();
        let (seq, why) = verify(&s).unwrap().first_bad.unwrap();
        assert_eq!(seq, 7);
        assert!(why.contains("no audit-pruned entry"), "{why}");

        // Entries removed without moving the anchor: the first one is named.
        let s = MemoryStore::new();
        write(&s, 10);
        prune(&s, 4);
        let mut b = Batch::new();
        b.delete(Space::Audit, entry_key(5));
        s.apply(b).unwrap();
        assert_eq!(verify(&s).unwrap().first_bad.unwrap().0, 5);
    }

    /// Found by `truc chaos crash-before-ack`: the check at start-up ran while the
    /// node was already appending, read the head, then saw entries past it and
    /// called the chain broken.
    #[test]
    fn entries_appended_after_the_head_was_read_are_not_a_fault() {
        let s = MemoryStore::new();
        write(&s, 10);
        let (_, head_hash) = head(&s).unwrap();
        // What a writer adds between the checker reading the head and scanning.
        let e = seal(
            head_hash,
            11,
            11,
            Draft {
                event: "stored".into(),
                doc_id: "d11".into(),
                from: "000.00.00.G22".into(),
                detail: String::new(),
            },
        );
        let mut b = Batch::new();
        b.put(Space::Audit, entry_key(11), record::encode(&e));
        s.apply(b).unwrap();
        let r = verify(&s).unwrap();
        assert_eq!((r.entries, r.first_bad), (10, None));
        assert_eq!(r.head, head_hash);
    }
}
