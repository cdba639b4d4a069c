//! The tower's APIs: the public HTTP API for users ([`http`]).

pub mod admin;
pub mod admission;
pub mod http;
pub mod metrics;
pub mod server;
