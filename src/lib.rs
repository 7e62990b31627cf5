//! Copilot: a gRPC gateway to large language models.
//!
//! The binary (`src/main.rs`) wires these modules together; they are a library so integration
//! tests and other tools can use the generated client (`proto::v1::copilot_client`). The modules
//! the binary, the tests, the fuzz target and the benchmark use are `pub`; the rest are the
//! server's own (`pub(crate)`).

pub mod admin_listeners;
pub(crate) mod admission;
pub mod auth;
pub mod cache;
pub(crate) mod codec;
pub mod config;
pub(crate) mod connection_limits;
pub(crate) mod connection_threads;
pub(crate) mod deadline;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod grpc_routes;
pub mod health;
pub(crate) mod key_hash;
pub mod providers;
pub(crate) mod request_body;
pub mod request_buffers;
pub(crate) mod request_headers;
pub(crate) mod resilience;
pub mod router;
pub mod server;
pub mod state;
pub(crate) mod summary;
pub mod telemetry;
pub(crate) mod tls;
pub mod validate;

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    pub mod v1 {
        tonic::include_proto!("copilot.v1");
    }

    /// The encoded descriptors of `proto/` (and their imports), served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/copilot_descriptor.bin"));
}
