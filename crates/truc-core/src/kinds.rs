//! Message kinds and the delivery state a sender sees per recipient.

use std::fmt;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Document,
    Status,
    Receipt,
}

/// Which step a signed receipt proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptType {
    /// The recipient's edge stored the document durably.
    Delivered,
    /// The recipient's application took the document.
    Acked,
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
/// States only move forward (`Queued < AtHub < Delivered < Acked`): receipts can
/// arrive before the parent's acknowledgement and must not move a state back.
/// `Failed` is final.
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
        match (self, next) {
            (Self::Failed, _) => Self::Failed,
            (_, Self::Failed) => Self::Failed,
            (a, b) => a.max(b),
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
        assert_eq!(Failed.advance(Acked), Failed);
        assert_eq!(AtHub.advance(Failed), Failed);
    }
}
