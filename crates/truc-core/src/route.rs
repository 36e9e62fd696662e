//! The routing decision: where a message for a set of agencies goes from this node.
//!
//! A node knows its own agencies (delivered locally), the agencies each child serves
//! (queued for that child), and whether it has a parent (everything else goes up).
//! A hub has no parent, so an agency it does not know is refused, never queued.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{NodeId, OrganId};

/// One place a message can go from this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// An agency served by this node itself: the local inbox.
    Local,
    /// A child node's queue.
    Child(NodeId),
    /// The parent's queue (the outbox of an edge).
    Parent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("unknown recipient {0}")]
    UnknownRecipient(OrganId),
    #[error("no recipients")]
    NoRecipients,
    #[error("recipient {0} listed twice")]
    DuplicateRecipient(OrganId),
}

/// Which agencies this node serves itself and which each child serves.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    local: HashMap<OrganId, ()>,
    children: HashMap<OrganId, NodeId>,
    child_nodes: BTreeSet<NodeId>,
    has_parent: bool,
}

impl RoutingTable {
    pub fn new(has_parent: bool) -> Self {
        Self {
            has_parent,
            ..Self::default()
        }
    }

    pub fn add_local(&mut self, organ: OrganId) {
        self.local.insert(organ, ());
    }

    /// Registers a child node, even one that serves no agency yet.
    pub fn add_child(&mut self, child: NodeId) {
        self.child_nodes.insert(child);
    }

    pub fn add_child_organ(&mut self, organ: OrganId, child: NodeId) {
        self.child_nodes.insert(child.clone());
        self.children.insert(organ, child);
    }

    /// Forgets where an agency served below is (it was removed from the directory).
    pub fn remove_child_organ(&mut self, organ: &OrganId) -> Option<NodeId> {
        self.children.remove(organ)
    }

    pub fn is_child(&self, node: &NodeId) -> bool {
        self.child_nodes.contains(node)
    }

    pub fn child_nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.child_nodes.iter()
    }

    pub fn is_local(&self, organ: &OrganId) -> bool {
        self.local.contains_key(organ)
    }

    /// The child the directory binds `organ` to, if any.
    pub fn child_of(&self, organ: &OrganId) -> Option<&NodeId> {
        self.children.get(organ)
    }

    pub fn local_organs(&self) -> impl Iterator<Item = &OrganId> {
        self.local.keys()
    }

    pub fn has_parent(&self) -> bool {
        self.has_parent
    }

    /// Splits `to` into destinations, each with the recipients it serves, in a
    /// stable order. All or nothing: one unknown recipient refuses the whole message.
    pub fn route(&self, to: &[OrganId]) -> Result<BTreeMap<Destination, Vec<OrganId>>, RouteError> {
        if to.is_empty() {
            return Err(RouteError::NoRecipients);
        }
        let mut out: BTreeMap<Destination, Vec<OrganId>> = BTreeMap::new();
        for (i, organ) in to.iter().enumerate() {
            if to[..i].contains(organ) {
                return Err(RouteError::DuplicateRecipient(organ.clone()));
            }
            let dest = if self.local.contains_key(organ) {
                Destination::Local
            } else if let Some(child) = self.children.get(organ) {
                Destination::Child(child.clone())
            } else if self.has_parent {
                Destination::Parent
            } else {
                return Err(RouteError::UnknownRecipient(organ.clone()));
            };
            out.entry(dest).or_default().push(organ.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> OrganId {
        s.parse().unwrap()
    }
    fn n(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn hub() -> RoutingTable {
        let mut t = RoutingTable::new(false);
        t.add_child_organ(o("000.00.00.H41"), n("nghean"));
        t.add_child_organ(o("000.00.00.H14"), n("caobang"));
        t.add_child_organ(o("000.00.00.G22"), n("vpcp"));
        t
    }

    #[test]
    fn hub_splits_recipients_by_child() {
        let r = hub()
            .route(&[o("000.00.00.H41"), o("000.00.00.H14")])
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[&Destination::Child(n("nghean"))],
            vec![o("000.00.00.H41")]
        );
        assert_eq!(
            r[&Destination::Child(n("caobang"))],
            vec![o("000.00.00.H14")]
        );
    }

    #[test]
    fn hub_refuses_the_whole_message_for_one_unknown_recipient() {
        let err = hub()
            .route(&[o("000.00.00.H41"), o("000.00.00.H99")])
            .unwrap_err();
        assert_eq!(err, RouteError::UnknownRecipient(o("000.00.00.H99")));
        assert_eq!(err.to_string(), "unknown recipient 000.00.00.H99");
    }

    #[test]
    fn edge_delivers_its_own_agencies_locally_and_sends_the_rest_up() {
        let mut t = RoutingTable::new(true);
        t.add_local(o("000.00.00.G22"));
        let r = t.route(&[o("000.00.00.G22"), o("000.00.00.H41")]).unwrap();
        assert_eq!(r[&Destination::Local], vec![o("000.00.00.G22")]);
        assert_eq!(r[&Destination::Parent], vec![o("000.00.00.H41")]);
    }

    #[test]
    fn empty_and_repeated_recipients_are_refused() {
        assert_eq!(hub().route(&[]), Err(RouteError::NoRecipients));
        assert!(matches!(
            hub().route(&[o("000.00.00.H41"), o("000.00.00.H41")]),
            Err(RouteError::DuplicateRecipient(_))
        ));
    }
}
