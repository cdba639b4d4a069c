//! Test support for teos' end-to-end tests.
//!
//! * [`regtest`]: a bitcoind-compatible regtest node (JSON-RPC over HTTP, real blocks, mempool,
//!   reorgs), in process or as the `teos-regtest-node` binary.
//! * [`backend`]: [`backend::Bitcoind`], the node the tests run against: ours, or a real bitcoind
//!   when `BITCOIND_EXE` names one.
//! * [`rpc_client`]: the tests' JSON-RPC client: any credentials, raw HTTP replies, the node's
//!   error objects (why it is not teosd's client: see its docs).
//! * [`bench`]: the benchmark harness behind the `teos-bench` binary (`scripts/bench`).
//! * [`python_client`]: a python-teos client (`teos_client.py`'s dialect), for the tests.
//! * [`tor`]: a real, offline `tor` daemon for the onion service tests.
//! * [`wallet`]: anyone-can-spend outputs, coinbase funding, commitment and penalty transactions.

pub mod backend;
pub mod bench;
pub mod python_client;
pub mod regtest;
pub mod rpc_client;
pub mod tor;
pub mod tower;
pub mod wallet;
