//! bitcoind's JSON shapes for headers, blocks, transactions, scripts and mempool entries.

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::opcodes::all::{OP_CLTV, OP_CSV, OP_PUSHBYTES_0, OP_PUSHNUM_NEG1};
use bitcoin::script::Instruction;
use bitcoin::{Address, Amount, Network, Script, Transaction};
use serde_json::{json, Map, Value};

use super::chain::{BlockEntry, Chain, Coin};
use super::mempool::{Mempool, MempoolEntry};
use super::validation::script_type;

/// An amount as bitcoind prints it: a number of BTC.
pub(crate) fn amount(value: Amount) -> Value {
    json!(value.to_btc())
}

/// Lowercase hex of a chainwork, 64 digits.
fn chainwork_hex(entry: &BlockEntry) -> String {
    hex::encode(entry.chainwork.to_be_bytes())
}

/// bitcoind's `blockheaderToJSON`.
pub(crate) fn header_json(chain: &Chain, entry: &BlockEntry) -> Map<String, Value> {
    let header = &entry.block.header;
    let mut obj = Map::new();
    obj.insert("hash".into(), json!(entry.hash.to_string()));
    obj.insert("confirmations".into(), json!(chain.confirmations(&entry.hash)));
    obj.insert("height".into(), json!(entry.height));
    obj.insert("version".into(), json!(header.version.to_consensus()));
    obj.insert("versionHex".into(), json!(format!("{:08x}", header.version.to_consensus())));
    obj.insert("merkleroot".into(), json!(header.merkle_root.to_string()));
    obj.insert("time".into(), json!(header.time));
    obj.insert("mediantime".into(), json!(chain.median_time_past(&entry.hash)));
    obj.insert("nonce".into(), json!(header.nonce));
    obj.insert("bits".into(), json!(format!("{:08x}", header.bits.to_consensus())));
    obj.insert("difficulty".into(), json!(header.difficulty_float()));
    obj.insert("chainwork".into(), json!(chainwork_hex(entry)));
    obj.insert("nTx".into(), json!(entry.block.txdata.len()));
    if let Some(prev) = entry.prev() {
        obj.insert("previousblockhash".into(), json!(prev.to_string()));
    }
    if let Some(next) = chain.next_active(&entry.hash) {
        obj.insert("nextblockhash".into(), json!(next.to_string()));
    }
    obj
}

/// bitcoind's `blockToJSON` for verbosity 1 (txids), 2 (transactions with fees) and 3 (and
/// prevouts).
pub(crate) fn block_json(chain: &Chain, entry: &BlockEntry, verbosity: i64) -> Value {
    let block = &entry.block;
    let mut obj = header_json(chain, entry);
    let base_size = bitcoin::consensus::serialize(&block.header).len()
        + bitcoin::VarInt::from(block.txdata.len()).size()
        + block.txdata.iter().map(Transaction::base_size).sum::<usize>();
    obj.insert("strippedsize".into(), json!(base_size));
    obj.insert("size".into(), json!(block.total_size()));
    obj.insert("weight".into(), json!(block.weight().to_wu()));
    let txs: Vec<Value> = if verbosity <= 1 {
        block.txdata.iter().map(|tx| json!(tx.compute_txid().to_string())).collect()
    } else {
        block
            .txdata
            .iter()
            .enumerate()
            .map(|(i, tx)| {
                let coins = i.checked_sub(1).and_then(|i| entry.undo.as_ref().map(|undo| undo[i].as_slice()));
                Value::Object(tx_json(tx, true, coins, verbosity >= 3))
            })
            .collect()
    };
    obj.insert("tx".into(), Value::Array(txs));
    Value::Object(obj)
}

/// bitcoind's `TxToUniv`. With `coins` (the outputs spent by the inputs), `fee` is added, and
/// each input's `prevout` too when `prevouts`.
pub(crate) fn tx_json(
    tx: &Transaction,
    include_hex: bool,
    coins: Option<&[Coin]>,
    prevouts: bool,
) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("txid".into(), json!(tx.compute_txid().to_string()));
    obj.insert("hash".into(), json!(tx.compute_wtxid().to_string()));
    obj.insert("version".into(), json!(tx.version.0));
    obj.insert("size".into(), json!(tx.total_size()));
    obj.insert("vsize".into(), json!(tx.vsize()));
    obj.insert("weight".into(), json!(tx.weight().to_wu()));
    obj.insert("locktime".into(), json!(tx.lock_time.to_consensus_u32()));
    let mut vin = Vec::with_capacity(tx.input.len());
    for (i, input) in tx.input.iter().enumerate() {
        let mut item = Map::new();
        if tx.is_coinbase() {
            item.insert("coinbase".into(), json!(hex::encode(input.script_sig.as_bytes())));
        } else {
            item.insert("txid".into(), json!(input.previous_output.txid.to_string()));
            item.insert("vout".into(), json!(input.previous_output.vout));
            item.insert(
                "scriptSig".into(),
                json!({
                    "asm": script_asm(&input.script_sig),
                    "hex": hex::encode(input.script_sig.as_bytes()),
                }),
            );
        }
        if !input.witness.is_empty() {
            let items: Vec<String> = input.witness.iter().map(hex::encode).collect();
            item.insert("txinwitness".into(), json!(items));
        }
        if let (true, Some(coin)) = (prevouts, coins.and_then(|c| c.get(i))) {
            item.insert(
                "prevout".into(),
                json!({
                    "generated": coin.is_coinbase,
                    "height": coin.height,
                    "value": amount(coin.txout.value),
                    "scriptPubKey": script_pubkey_json(&coin.txout.script_pubkey),
                }),
            );
        }
        item.insert("sequence".into(), json!(input.sequence.0));
        vin.push(Value::Object(item));
    }
    obj.insert("vin".into(), Value::Array(vin));
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, output)| {
            json!({
                "value": amount(output.value),
                "n": n,
                "scriptPubKey": script_pubkey_json(&output.script_pubkey),
            })
        })
        .collect();
    obj.insert("vout".into(), Value::Array(vout));
    if let Some(coins) = coins {
        let value_in: u64 = coins.iter().map(|c| c.txout.value.to_sat()).sum();
        let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        obj.insert("fee".into(), amount(Amount::from_sat(value_in.saturating_sub(value_out))));
    }
    if include_hex {
        obj.insert("hex".into(), json!(serialize_hex(tx)));
    }
    obj
}

/// bitcoind's `ScriptToUniv` for an output script.
pub(crate) fn script_pubkey_json(script: &Script) -> Value {
    let mut obj = Map::new();
    obj.insert("asm".into(), json!(script_asm(script)));
    obj.insert("desc".into(), json!(infer_descriptor(script)));
    obj.insert("hex".into(), json!(hex::encode(script.as_bytes())));
    if let Ok(address) = Address::from_script(script, Network::Regtest) {
        obj.insert("address".into(), json!(address.to_string()));
    }
    obj.insert("type".into(), json!(script_type(script)));
    Value::Object(obj)
}

/// bitcoind's `ScriptToAsmStr` (without signature hash type decoding).
pub(crate) fn script_asm(script: &Script) -> String {
    let mut parts = Vec::new();
    for instruction in script.instructions() {
        match instruction {
            Ok(Instruction::PushBytes(bytes)) => {
                let bytes = bytes.as_bytes();
                if bytes.is_empty() {
                    parts.push("0".to_string());
                } else if bytes.len() <= 4 {
                    parts.push(script_num(bytes).to_string());
                } else {
                    parts.push(hex::encode(bytes));
                }
            }
            Ok(Instruction::Op(op)) => {
                let name = if op == OP_PUSHBYTES_0 {
                    "0".to_string()
                } else if op == OP_PUSHNUM_NEG1 {
                    "-1".to_string()
                } else if let Some(n) = pushnum(op) {
                    n.to_string()
                } else if op == OP_CLTV {
                    "OP_CHECKLOCKTIMEVERIFY".to_string()
                } else if op == OP_CSV {
                    "OP_CHECKSEQUENCEVERIFY".to_string()
                } else {
                    op.to_string()
                };
                parts.push(name);
            }
            Err(_) => {
                parts.push("[error]".to_string());
                break;
            }
        }
    }
    parts.join(" ")
}

/// The number `OP_1`..`OP_16` push.
pub(crate) fn pushnum(op: bitcoin::opcodes::Opcode) -> Option<u8> {
    let byte = op.to_u8();
    (0x51..=0x60).contains(&byte).then(|| byte - 0x50)
}

/// A little-endian sign-magnitude script number of at most 4 bytes.
fn script_num(bytes: &[u8]) -> i64 {
    let mut value: i64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        value |= i64::from(*b) << (8 * i);
    }
    let last = bytes[bytes.len() - 1];
    if last & 0x80 != 0 {
        -(value & !(0x80i64 << (8 * (bytes.len() - 1))))
    } else {
        value
    }
}

/// bitcoind's `InferDescriptor` without a signing provider, with its checksum.
fn infer_descriptor(script: &Script) -> String {
    let body = if let Some(key) = script.p2pk_public_key() {
        format!("pk({key})")
    } else if script.is_p2tr() {
        format!("rawtr({})", hex::encode(&script.as_bytes()[2..]))
    } else if script.is_multisig() {
        let bytes = script.as_bytes();
        let required = bytes[0] - 0x50;
        let keys: Vec<String> = script
            .instructions()
            .filter_map(|i| match i {
                Ok(Instruction::PushBytes(b)) => Some(hex::encode(b.as_bytes())),
                _ => None,
            })
            .collect();
        format!("multi({required},{})", keys.join(","))
    } else if let Ok(address) = Address::from_script(script, Network::Regtest) {
        format!("addr({address})")
    } else {
        format!("raw({})", hex::encode(script.as_bytes()))
    };
    descriptor_with_checksum(&body)
}

/// Appends the BIP380 descriptor checksum.
pub(crate) fn descriptor_with_checksum(desc: &str) -> String {
    const INPUT_CHARSET: &str =
        "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
    const CHECKSUM_CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GENERATOR: [u64; 5] = [0xf5dee51989, 0xa9fdca3312, 0x1bab10e32d, 0x3706b1677a, 0x644d626ffd];
    fn polymod(mut chk: u64, value: u64) -> u64 {
        let top = chk >> 35;
        chk = ((chk & 0x7_ffff_ffff) << 5) ^ value;
        for (i, g) in GENERATOR.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
        chk
    }
    let mut chk = 1u64;
    let mut classes = Vec::with_capacity(3);
    for c in desc.chars() {
        let Some(pos) = INPUT_CHARSET.find(c) else {
            return desc.to_string();
        };
        let pos = pos as u64;
        chk = polymod(chk, pos & 31);
        classes.push(pos >> 5);
        if classes.len() == 3 {
            chk = polymod(chk, classes[0] * 9 + classes[1] * 3 + classes[2]);
            classes.clear();
        }
    }
    match classes.len() {
        1 => chk = polymod(chk, classes[0]),
        2 => chk = polymod(chk, classes[0] * 3 + classes[1]),
        _ => {}
    }
    for _ in 0..8 {
        chk = polymod(chk, 0);
    }
    chk ^= 1;
    let checksum: String = (0..8).map(|i| CHECKSUM_CHARSET[((chk >> (5 * (7 - i))) & 31) as usize] as char).collect();
    format!("{desc}#{checksum}")
}

/// bitcoind's `entryToJSON` (mempool entries).
pub(crate) fn mempool_entry_json(mempool: &Mempool, entry: &MempoolEntry) -> Value {
    let ancestors = mempool.ancestors(&entry.txid);
    let descendants = mempool.descendants(&entry.txid);
    let sum = |set: &std::collections::HashSet<bitcoin::Txid>| -> (u64, Amount) {
        set.iter()
            .filter_map(|t| mempool.get(t))
            .fold((0, Amount::ZERO), |(size, fee), e| (size + e.vsize, fee + e.fee))
    };
    let (ancestor_size, ancestor_fees) = sum(&ancestors);
    let (descendant_size, descendant_fees) = sum(&descendants);
    let replaceable =
        entry.signals_rbf() || ancestors.iter().filter_map(|t| mempool.get(t)).any(MempoolEntry::signals_rbf);
    let depends: Vec<String> = mempool.parents(&entry.txid).iter().map(ToString::to_string).collect();
    let spent_by: Vec<String> = mempool.children(&entry.txid).iter().map(ToString::to_string).collect();
    json!({
        "vsize": entry.vsize,
        "weight": entry.weight,
        "time": entry.time,
        "height": entry.height,
        "descendantcount": descendants.len() + 1,
        "descendantsize": descendant_size + entry.vsize,
        "ancestorcount": ancestors.len() + 1,
        "ancestorsize": ancestor_size + entry.vsize,
        "wtxid": entry.wtxid.to_string(),
        "fees": {
            "base": amount(entry.fee),
            "modified": amount(entry.fee),
            "ancestor": amount(ancestor_fees + entry.fee),
            "descendant": amount(descendant_fees + entry.fee),
        },
        "depends": depends,
        "spentby": spent_by,
        "bip125-replaceable": replaceable,
        "unbroadcast": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_checksum_matches_bip380() {
        assert_eq!(descriptor_with_checksum("raw(deadbeef)"), "raw(deadbeef)#89f8spxm");
    }

    #[test]
    fn asm_like_bitcoind() {
        let script = bitcoin::ScriptBuf::from_bytes(vec![0x00, 0x02, 0xe8, 0x03, 0x51, 0x6a]);
        assert_eq!(script_asm(&script), "0 1000 1 OP_RETURN");
        let negative = bitcoin::ScriptBuf::from_bytes(vec![0x01, 0x81]);
        assert_eq!(script_asm(&negative), "-1");
    }
}
