//! idmint: a certificate authority and mTLS identity service issuing short-lived SPIFFE
//! X.509-SVIDs bound to Cloud Foundry app instances.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod ca;
pub mod config;
pub mod ids;
pub mod ledger;
pub mod placement;
pub mod server;
pub mod spiffe;
pub mod store;
pub mod admin;
pub mod app;
pub mod cli;
