//! truc's domain vocabulary: identifiers, message kinds, delivery states and routing.
//!
//! Nothing here performs IO or reads a clock; the runtime (`truc-node`) feeds it
//! values and acts on what it returns.

#![forbid(unsafe_code)]

pub mod ids;
pub mod kinds;
pub mod names;
pub mod route;

pub use ids::{DocId, IdError, NodeId, OrganId, Seq};
pub use kinds::{BusinessType, DeliveryState, Kind, Priority, ReceiptType, StatusCode};
pub use names::{NameError, check_attachment_name, check_attachment_path, plain_file_name};
pub use route::{Destination, RouteError, RoutingTable};
