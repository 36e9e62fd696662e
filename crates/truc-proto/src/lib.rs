//! Generated protobuf and gRPC code for truc's wire contract (`proto/truc/v1`).
//!
//! Domain code converts to and from these types at its boundary; nothing outside
//! the transport layer should pass prost structs around.

#![forbid(unsafe_code)]

/// `truc.v1`: envelopes, the node-to-node link and the agency API.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod v1 {
    tonic::include_proto!("truc.v1");
}

/// Encoded `FileDescriptorSet` of every truc proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/truc_descriptor.bin"));
