//! Block assembly: coinbase (BIP34 height, subsidy plus fees, witness commitment), merkle root
//! and proof of work against regtest's target.

use bitcoin::block::{Header, Version};
use bitcoin::blockdata::locktime::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::script::PushBytesBuf;
use bitcoin::transaction::Version as TxVersion;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Target, Transaction, TxIn, TxMerkleNode,
    TxOut, Witness,
};

use super::validation::bip34_prefix;
use super::REGTEST_BITS;

/// The header version bitcoind 27 mines on regtest (BIP9 top bits, no deployment signalled).
const BLOCK_VERSION: i32 = 0x2000_0000;

/// A block on top of `prev_hash` (at `height`), holding `txs` after a coinbase that pays
/// `reward` to `payout`. Its time is `time`, which the caller keeps increasing.
pub(crate) fn assemble_block(
    prev_hash: BlockHash,
    height: u32,
    time: u32,
    txs: Vec<Transaction>,
    payout: ScriptBuf,
    reward: Amount,
) -> Block {
    // bitcoind's coinbase script sig: `<height> OP_0`.
    let mut script_sig = bip34_prefix(height).into_bytes();
    script_sig.push(0x00);
    let coinbase = Transaction {
        version: TxVersion::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(script_sig),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![
            TxOut { value: reward, script_pubkey: payout },
            TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new() },
        ],
    };
    let mut txdata = Vec::with_capacity(txs.len() + 1);
    txdata.push(coinbase);
    txdata.extend(txs);
    let mut block = Block {
        header: Header {
            version: Version::from_consensus(BLOCK_VERSION),
            prev_blockhash: prev_hash,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(REGTEST_BITS),
            nonce: 0,
        },
        txdata,
    };

    // bitcoind always commits to the witnesses once segwit is active (from genesis on regtest).
    let witness_root = block.witness_root().expect("a block with a coinbase has a witness root");
    let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
    let mut data = PushBytesBuf::from([0xaa, 0x21, 0xa9, 0xed]);
    data.extend_from_slice(commitment.as_byte_array()).expect("36 bytes fit a push");
    block.txdata[0].output[1].script_pubkey = ScriptBuf::new_op_return(data);

    block.header.merkle_root = block.compute_merkle_root().expect("a block with a coinbase has a merkle root");
    grind(&mut block.header);
    block
}

/// Finds a nonce (bumping the time if all nonces fail) that meets the header's target.
fn grind(header: &mut Header) {
    let target = Target::from_compact(header.bits);
    loop {
        if header.validate_pow(target).is_ok() {
            return;
        }
        header.nonce = match header.nonce.checked_add(1) {
            Some(nonce) => nonce,
            None => {
                header.time += 1;
                0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::blockdata::constants::genesis_block;
    use bitcoin::Network;

    #[test]
    fn assembled_blocks_are_valid() {
        let genesis = genesis_block(Network::Regtest);
        let payout = ScriptBuf::new_p2wsh(&ScriptBuf::from_bytes(vec![0x51]).wscript_hash());
        let block = assemble_block(
            genesis.block_hash(),
            1,
            genesis.header.time + 1,
            vec![],
            payout,
            Amount::from_btc(50.0).expect("valid amount"),
        );
        assert!(block.check_merkle_root());
        assert!(block.check_witness_commitment());
        assert!(block.header.validate_pow(block.header.target()).is_ok());
        assert_eq!(block.txdata[0].input[0].script_sig.as_bytes(), &[0x51, 0x00]);
    }
}
