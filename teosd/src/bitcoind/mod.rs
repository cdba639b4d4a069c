//! bitcoind: the one place that talks to it. A JSON-RPC client ([`rpc`]), the [`source`] that
//! makes it the tower's [`crate::chain::BlockSource`] and [`crate::chain::Broadcaster`], and the
//! ZMQ subscriber ([`zmq`]) that wakes the chain follower and hands it whole blocks.

pub mod rpc;
pub mod source;
pub mod zmq;

pub use source::{BitcoindBroadcaster, BitcoindSource};
