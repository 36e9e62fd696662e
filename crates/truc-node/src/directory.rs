//! The directory a node routes and checks by: agencies, their names, their
//! administrative parents and the node that serves each. Hubs build it from their
//! config; children receive it over the link and keep a copy, so recipients are
//! checked up front and lookups work while the parent is unreachable.

use std::collections::BTreeMap;

use prost::Message;
use truc_core::OrganId;
use truc_proto::v1 as pb;

use crate::config::Config;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    /// 0: never received (an edge that has not met its parent yet).
    pub version: u64,
    pub entries: BTreeMap<OrganId, pb::AgencyEntry>,
}

impl Directory {
    /// What this node knows from its own config: its agencies and its children's.
    pub fn from_config(c: &Config) -> Self {
        let mut entries = BTreeMap::new();
        let describe = |organ: &OrganId, name: &str, node: &str| {
            let (dname, parent, serving) = c.directory.get(organ).cloned().unwrap_or_default();
            pb::AgencyEntry {
                organ: organ.to_string(),
                name: if dname.is_empty() {
                    name.to_owned()
                } else {
                    dname
                },
                parent: parent.map(|p| p.to_string()).unwrap_or_default(),
                node: serving
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| node.to_owned()),
            }
        };
        for (organ, name, _, _) in &c.agencies {
            entries.insert(organ.clone(), describe(organ, name, c.node_id.as_str()));
        }
        for (child, organs) in &c.children {
            for organ in organs {
                entries.insert(organ.clone(), describe(organ, "", child.as_str()));
            }
        }
        let mut d = Self {
            version: 0,
            entries,
        };
        d.version = d.content_version();
        d
    }

    /// A version derived from the content: equal directories, equal versions.
    pub fn content_version(&self) -> u64 {
        let bytes = self.to_pb_with(0).encode_to_vec();
        let h = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut v = [0u8; 8];
        v.copy_from_slice(&h.as_ref()[..8]);
        u64::from_be_bytes(v).max(1)
    }

    fn to_pb_with(&self, version: u64) -> pb::Directory {
        pb::Directory {
            version,
            agencies: self.entries.values().cloned().collect(),
        }
    }

    pub fn to_pb(&self) -> pb::Directory {
        self.to_pb_with(self.version)
    }

    /// A directory received from a parent. Malformed entries are skipped and named.
    pub fn from_pb(d: &pb::Directory) -> Self {
        let mut entries = BTreeMap::new();
        for a in &d.agencies {
            match a.organ.parse::<OrganId>() {
                Ok(o) => {
                    entries.insert(o, a.clone());
                }
                Err(e) => tracing::warn!(organ = %a.organ, error = %e, "directory entry skipped"),
            }
        }
        Self {
            version: d.version,
            entries,
        }
    }

    pub fn known(&self) -> bool {
        self.version != 0
    }

    pub fn get(&self, organ: &OrganId) -> Option<&pb::AgencyEntry> {
        self.entries.get(organ)
    }

    /// Merges what a parent sent with this node's own agencies (which win).
    pub fn merged_with(mut self, own: &Directory) -> Directory {
        for (k, v) in &own.entries {
            self.entries.insert(k.clone(), v.clone());
        }
        self
    }
}
