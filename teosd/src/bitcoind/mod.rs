//! bitcoind access: a JSON-RPC client ([`rpc`]) and the chain follower ([`chain`]).

pub mod chain;
pub mod rpc;
