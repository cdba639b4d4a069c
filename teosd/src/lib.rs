//! teosd: The Eye of Satoshi, a Lightning Network watchtower.
//!
//! The binary parses [`config::Config`], sets up tracing and calls [`run`]. Everything else lives
//! here: the protocol ([`protocol`]), the store ([`store`]), the request-side core
//! ([`gatekeeper`], [`watcher`], [`tower`]) and the APIs ([`api`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod gatekeeper;
pub mod keys;
pub mod protocol;
pub mod store;
pub mod tower;
pub mod watcher;
