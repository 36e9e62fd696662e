//! The audit log: every state change a node makes is appended, in the same atomic
//! batch as the change itself, to a hash chain. Each entry's hash covers the
//! previous hash and the entry, and the chain head is kept apart, so an edited,
//! removed or truncated entry is found and named by [`verify`].

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
    match store.get(Space::Meta, &head_key())? {
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
        Self {
            prev: [0u8; 32],
            next_seq: 1,
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
    pub entries: u64,
    /// The first entry that does not verify, and why.
    pub first_bad: Option<(u64, String)>,
    pub head: [u8; 32],
}

/// Walks the whole chain from entry 1 up to the head read when it starts. A
/// running node keeps appending meanwhile (each batch writes entries and head
/// together): entries after that head are newer, not a fault, and are left to
/// the next check.
pub fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let (head_seq, head_hash) = head(store)?;
    let mut walk = ChainWalk::from_start();
    let mut after: Option<Vec<u8>> = None;
    let bad = |seq: u64, why: String, walk: &ChainWalk| Report {
        entries: walk.last_seq(),
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
    if n > 0 && walk.head() != head_hash {
        return Ok(Report {
            entries: n - 1,
            first_bad: Some((
                n,
                format!("entry {n} does not match the recorded chain head"),
            )),
            head: walk.head(),
        });
    }
    Ok(Report {
        entries: n,
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
