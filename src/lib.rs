//! idmint: a certificate authority and mTLS identity service issuing short-lived SPIFFE
//! X.509-SVIDs bound to Cloud Foundry app instances.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod app;
pub mod bench;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error_text;
pub mod files;
pub mod fuzz;
pub mod ids;
pub mod jwt;
pub mod ledger;
pub mod message_limit;
pub mod placement;
pub mod policy;
pub mod proto;
pub mod renewal;
pub mod sds;
pub mod server;
pub mod spiffe;
pub mod store;
pub mod workload_api;
