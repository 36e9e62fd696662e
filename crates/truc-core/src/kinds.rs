//! Message kinds and the delivery state a sender sees per recipient.

use std::fmt;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Document,
    Status,
    Receipt,
    /// A change to the agency directory, signed by a node.
    Directory,
}

/// Which step a signed receipt proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptType {
    /// The recipient's edge stored the document durably (signed by the recipient agency).
    Delivered,
    /// The recipient's application took the document (signed by the recipient agency).
    Acked,
    /// A hub or relay stored the document durably (signed by that node).
    Accepted,
    /// A hub or relay gave up on delivering by the deadline (signed by that node).
    Undeliverable,
}

impl ReceiptType {
    /// Whether a node (not an agency) signs this kind of receipt.
    pub fn node_signed(self) -> bool {
        matches!(self, Self::Accepted | Self::Undeliverable)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Acked => "acked",
            Self::Accepted => "accepted",
            Self::Undeliverable => "undeliverable",
        }
    }
}

/// edXML `BussinessDocType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusinessType {
    New = 0,
    Revoke = 1,
    Update = 2,
    Replace = 3,
}

impl BusinessType {
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::New,
            1 => Self::Revoke,
            2 => Self::Update,
            3 => Self::Replace,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Revoke => "revoke",
            Self::Update => "update",
            Self::Replace => "replace",
        }
    }
}

/// A business status code (edXML status package). No other codes are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    Arrived,
    Rejected,
    Accepted,
    Assigned,
    Processing,
    Finished,
    RecallRequest,
    AcceptsChange,
    RefusesChange,
}

impl StatusCode {
    pub const ALL: [StatusCode; 9] = [
        Self::Arrived,
        Self::Rejected,
        Self::Accepted,
        Self::Assigned,
        Self::Processing,
        Self::Finished,
        Self::RecallRequest,
        Self::AcceptsChange,
        Self::RefusesChange,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Arrived => "01",
            Self::Rejected => "02",
            Self::Accepted => "03",
            Self::Assigned => "04",
            Self::Processing => "05",
            Self::Finished => "06",
            Self::RecallRequest => "13",
            Self::AcceptsChange => "15",
            Self::RefusesChange => "16",
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Self::Arrived => "arrived",
            Self::Rejected => "rejected",
            Self::Accepted => "accepted (registered)",
            Self::Assigned => "assigned",
            Self::Processing => "processing",
            Self::Finished => "finished",
            Self::RecallRequest => "recall request",
            Self::AcceptsChange => "accepts the update/recall",
            Self::RefusesChange => "refuses the update/recall",
        }
    }

    /// 13 goes from the original sender to its recipients; every other code from a
    /// recipient back to the original sender.
    pub fn from_original_sender(self) -> bool {
        self == Self::RecallRequest
    }

    /// 15 and 16 answer a revoke, update or replace (or a 13), not a plain document.
    pub fn answers_change(self) -> bool {
        matches!(self, Self::AcceptsChange | Self::RefusesChange)
    }
}

impl std::str::FromStr for StatusCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.code() == s)
            .ok_or_else(|| format!("status code {s:?} is not one of 01 02 03 04 05 06 13 15 16"))
    }
}

/// edXML priority (`OtherInfo/Priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Normal = 0,
    Urgent = 1,
    VeryUrgent = 2,
    Express = 3,
    TimedExpress = 4,
}

impl TryFrom<u32> for Priority {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            0 => Self::Normal,
            1 => Self::Urgent,
            2 => Self::VeryUrgent,
            3 => Self::Express,
            4 => Self::TimedExpress,
            other => return Err(other),
        })
    }
}

/// Where one recipient's copy of a sent document stands, as its sender sees it.
///
/// States only move forward, in the order `Queued < AtHub < Failed < Delivered <
/// Acked`: receipts can arrive before the parent's acknowledgement and must not move
/// a state back; a failure (refused, undeliverable by the deadline) overrides
/// "queued"/"at hub" but a signed receipt proving delivery (after an operator
/// requeued it) overrides the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryState {
    Queued = 1,
    AtHub = 2,
    Delivered = 3,
    Acked = 4,
    Failed = 5,
}

impl DeliveryState {
    /// The state after an event that claims `next`: the later of the two, and
    /// `Failed` stays failed.
    pub fn advance(self, next: DeliveryState) -> DeliveryState {
        if next.rank() > self.rank() {
            next
        } else {
            self
        }
    }

    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::AtHub => 1,
            Self::Failed => 2,
            Self::Delivered => 3,
            Self::Acked => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::AtHub => "at hub",
            Self::Delivered => "delivered",
            Self::Acked => "acked",
            Self::Failed => "failed",
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Queued,
            2 => Self::AtHub,
            3 => Self::Delivered,
            4 => Self::Acked,
            5 => Self::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ReceiptType> for DeliveryState {
    fn from(r: ReceiptType) -> Self {
        match r {
            ReceiptType::Delivered => Self::Delivered,
            ReceiptType::Acked => Self::Acked,
            ReceiptType::Accepted => Self::AtHub,
            ReceiptType::Undeliverable => Self::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryState::*;

    #[test]
    fn states_never_move_back() {
        assert_eq!(Delivered.advance(AtHub), Delivered);
        assert_eq!(Queued.advance(Delivered), Delivered);
        assert_eq!(Acked.advance(Queued), Acked);
        assert_eq!(AtHub.advance(Failed), Failed);
        assert_eq!(Failed.advance(AtHub), Failed);
        // A requeued document that then arrives: the signed receipt wins.
        assert_eq!(Failed.advance(Delivered), Delivered);
        assert_eq!(Delivered.advance(Failed), Delivered);
    }

    #[test]
    fn only_the_nine_status_codes_parse() {
        for c in super::StatusCode::ALL {
            assert_eq!(c.code().parse::<super::StatusCode>().unwrap(), c);
        }
        for bad in ["00", "07", "12", "14", "17", "1", "3", ""] {
            assert!(bad.parse::<super::StatusCode>().is_err(), "{bad}");
        }
    }
}
