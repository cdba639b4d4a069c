//! teosd: The Eye of Satoshi, a Lightning Network watchtower.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod config;
pub mod protocol;
pub mod store;
