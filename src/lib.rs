//! Copilot: a gRPC gateway to large language models.
//!
//! The binary (`src/main.rs`) wires these modules together; they are a library so integration
//! tests and other tools can use the generated client (`proto::v1::copilot_client`).

pub mod admin_listeners;
pub mod admission;
pub mod auth;
pub mod codec;
pub mod config;
pub mod connection_limits;
pub mod connection_threads;
pub mod deadline;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod health;
pub mod key_hash;
pub mod providers;
pub mod request_body;
pub mod request_buffers;
pub mod request_headers;
pub mod resilience;
pub mod router;
pub mod server;
pub mod summary;
pub mod telemetry;
pub mod tls;
pub mod validate;

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    pub mod v1 {
        tonic::include_proto!("copilot.v1");
    }

    /// The encoded descriptors of `proto/` (and their imports), served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/copilot_descriptor.bin"));
}
