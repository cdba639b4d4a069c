//! The tower's APIs: the public HTTP API for users ([`http`]).

pub mod admin;
pub mod http;
