//! bitcoind access: a JSON-RPC client ([`rpc`]), the chain follower ([`chain`]) and the ZMQ
//! `hashblock` subscriber that wakes it ([`zmq`]).

pub mod chain;
pub mod rpc;
pub mod zmq;
