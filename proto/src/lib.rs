//! Wire types shared by teosd, teos-cli and the tests.
