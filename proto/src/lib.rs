//! Wire types shared by teosd, teos-cli and the tests: the public HTTP API's JSON shapes
//! (byte-compatible with the reference tower and its clients) and the error codes.
#![deny(missing_docs)]

pub mod errors;
pub mod http;
