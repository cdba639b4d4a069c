//! What the follower checks before it shows a block to anyone: that it is the block its header
//! names, with enough proof of work for the network, and that its transactions are the ones its
//! merkle root commits to.

use bitcoin::pow::Target;
use bitcoin::{BlockHash, Network, TxMerkleNode};

use super::{ChainError, ConnectedBlock};

/// Checks `block` against the hash it was asked for, `network`'s proof-of-work limit and its
/// merkle root.
pub fn check_block(network: Network, expected: &BlockHash, block: &ConnectedBlock) -> Result<(), ChainError> {
    let invalid = |reason: &str| ChainError::InvalidBlock { hash: *expected, reason: reason.to_string() };
    if block.hash != *expected {
        return Err(invalid("hash does not match the header"));
    }
    let header = &block.block.header;
    let limit: Target = bitcoin::params::Params::new(network).max_attainable_target;
    let target = header.target();
    if target > limit || header.validate_pow(target).is_err() {
        return Err(invalid("insufficient proof of work"));
    }
    let root = bitcoin::merkle_tree::calculate_root(block.txids.iter().map(|t| t.to_raw_hash()));
    if root.map(TxMerkleNode::from_raw_hash) != Some(header.merkle_root) {
        return Err(invalid("merkle root mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::FakeChain;
    use bitcoin::hashes::Hash;

    #[test]
    fn a_block_with_another_transaction_list_or_hash_is_refused() {
        let chain = FakeChain::new();
        let block = chain.mine(vec![]);
        let good = ConnectedBlock::new(1, block.clone());
        check_block(Network::Regtest, &good.hash, &good).unwrap();

        let err = check_block(Network::Regtest, &BlockHash::all_zeros(), &good).unwrap_err();
        assert!(err.to_string().contains("hash does not match"), "{err}");

        let mut tampered = block;
        tampered.txdata.push(crate::test_utils::spending(bitcoin::OutPoint::null()));
        let tampered = ConnectedBlock::new(1, tampered);
        let err = check_block(Network::Regtest, &tampered.hash, &tampered).unwrap_err();
        assert!(err.to_string().contains("merkle root"), "{err}");
    }

    #[test]
    fn a_regtest_block_does_not_pass_for_mainnet() {
        let chain = FakeChain::new();
        let block = ConnectedBlock::new(1, chain.mine(vec![]));
        let err = check_block(Network::Bitcoin, &block.hash, &block).unwrap_err();
        assert!(err.to_string().contains("proof of work"), "{err}");
    }
}
