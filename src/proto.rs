//! The server API's messages and gRPC stubs, generated from `proto/idmint.proto` at build time.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("idmint.v1");

/// The most sign requests one `SignBatch` call may carry.
pub const MAX_SIGN_BATCH: usize = 256;
