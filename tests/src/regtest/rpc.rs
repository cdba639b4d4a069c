//! JSON-RPC methods: parameter handling and results shaped as bitcoind 27 shapes them. Each
//! method is one function of the same name, listed in [`METHODS`] with its parameters.
//!
//! Blockchain: `getblockchaininfo`, `getblockcount`, `getbestblockhash`, `getblockhash`,
//! `getblockheader`, `getblock`, `getchaintips`, `getdifficulty`, `gettxout`, `getindexinfo`.
//! Transactions and mempool: `sendrawtransaction`, `testmempoolaccept`, `getrawtransaction`,
//! `decoderawtransaction`, `getrawmempool`, `getmempoolentry`, `getmempoolinfo`,
//! `estimatesmartfee`. Node: `getnetworkinfo`, `getconnectioncount`, `getpeerinfo`,
//! `getzmqnotifications`, `uptime`, `ping`, `stop`, `help`. Test controls: `generatetoaddress`,
//! `generateblock`, `submitblock`, `invalidateblock`, `reconsiderblock`.

use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{Block, BlockHash, OutPoint, Transaction, Txid};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::codes::*;
use super::json::{amount, block_json, header_json, mempool_entry_json, script_pubkey_json, tx_json};
use super::params::{
    address_script, decode_tx, descriptor_script, get_fee_rate, get_hash, get_int, get_str, opt_bool, opt_verbosity,
    positional, spec, type_error, Spec,
};
use super::state::NodeState;
use super::validation::INCREMENTAL_RELAY_FEE_RATE;
use super::{RpcError, NODE_SUBVERSION, NODE_VERSION};

/// What a request needs from the node.
#[derive(Debug, Clone)]
pub(crate) struct RpcContext {
    pub state: Arc<Mutex<NodeState>>,
    /// When this run of the server started (for `uptime`).
    pub started: Instant,
    /// Cancelled by `stop`.
    pub stop: CancellationToken,
    /// The ZMQ endpoint (`hashblock`, `rawblock`, `rawtx`), if publishing (for
    /// `getzmqnotifications`).
    pub zmq_hashblock: Option<String>,
}

impl RpcContext {
    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn block_not_found() -> RpcError {
    RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
}

/// Every method: its parameters ([`Spec`]) and the function that runs it.
const METHODS: &[Spec] = &[
    spec("getblockchaininfo", &[], 0, getblockchaininfo),
    spec("getblockcount", &[], 0, getblockcount),
    spec("getbestblockhash", &[], 0, getbestblockhash),
    spec("getblockhash", &["height"], 1, getblockhash),
    spec("getblockheader", &["blockhash", "verbose"], 1, getblockheader),
    spec("getblock", &["blockhash", "verbosity"], 1, getblock),
    spec("getchaintips", &[], 0, getchaintips),
    spec("getdifficulty", &[], 0, getdifficulty),
    spec("gettxout", &["txid", "n", "include_mempool"], 2, gettxout),
    spec("getindexinfo", &["index_name"], 0, getindexinfo),
    spec("sendrawtransaction", &["hexstring", "maxfeerate", "maxburnamount"], 1, sendrawtransaction),
    spec("testmempoolaccept", &["rawtxs", "maxfeerate"], 1, testmempoolaccept),
    spec("getrawtransaction", &["txid", "verbose", "blockhash"], 1, getrawtransaction),
    spec("decoderawtransaction", &["hexstring", "iswitness"], 1, decoderawtransaction),
    spec("getrawmempool", &["verbose", "mempool_sequence"], 0, getrawmempool),
    spec("getmempoolentry", &["txid"], 1, getmempoolentry),
    spec("getmempoolinfo", &[], 0, getmempoolinfo),
    spec("estimatesmartfee", &["conf_target", "estimate_mode"], 1, estimatesmartfee),
    spec("getnetworkinfo", &[], 0, getnetworkinfo),
    spec("getconnectioncount", &[], 0, getconnectioncount),
    spec("getzmqnotifications", &[], 0, getzmqnotifications),
    spec("getpeerinfo", &[], 0, getpeerinfo),
    spec("uptime", &[], 0, uptime),
    spec("ping", &[], 0, ping),
    spec("stop", &["wait"], 0, stop),
    spec("help", &["command"], 0, help),
    spec("generatetoaddress", &["nblocks", "address", "maxtries"], 2, generatetoaddress),
    spec("generateblock", &["output", "transactions", "submit"], 2, generateblock),
    spec("submitblock", &["hexdata", "dummy"], 1, submitblock),
    spec("invalidateblock", &["blockhash"], 1, invalidateblock),
    spec("reconsiderblock", &["blockhash"], 1, reconsiderblock),
];

/// Runs `method`; `Err` carries bitcoind's error code and message.
pub(crate) fn dispatch(ctx: &RpcContext, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
    let Some(spec) = METHODS.iter().find(|s| s.name == method) else {
        return Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found"));
    };
    let p = positional(spec, params)?;
    (spec.run)(ctx, &p)
}

// Blockchain.

fn getblockchaininfo(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    let state = ctx.state();
    let chain = &state.chain;
    let tip = chain.tip();
    Ok(json!({
        "chain": "regtest",
        "blocks": tip.height,
        "headers": tip.height,
        "bestblockhash": tip.hash.to_string(),
        "difficulty": tip.block.header.difficulty_float(),
        "time": tip.block.header.time,
        "mediantime": chain.median_time_past(&tip.hash),
        "verificationprogress": 1.0,
        "initialblockdownload": false,
        "chainwork": hex::encode(tip.chainwork.to_be_bytes()),
        "size_on_disk": chain.size_on_disk(),
        "pruned": false,
        "warnings": "",
    }))
}

fn getblockcount(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(json!(ctx.state().chain.height()))
}

fn getbestblockhash(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(json!(ctx.state().chain.tip().hash.to_string()))
}

fn getblockhash(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let height = get_int(&p[0])?;
    let state = ctx.state();
    u32::try_from(height)
        .ok()
        .and_then(|h| state.chain.hash_at(h))
        .map(|h| json!(h.to_string()))
        .ok_or_else(|| RpcError::new(RPC_INVALID_PARAMETER, "Block height out of range"))
}

fn getblockheader(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let hash: BlockHash = get_hash(&p[0], "hash")?;
    let verbose = opt_bool(&p[1], true)?;
    let state = ctx.state();
    let entry = state.chain.get(&hash).ok_or_else(block_not_found)?;
    if verbose {
        Ok(Value::Object(header_json(&state.chain, entry)))
    } else {
        Ok(json!(serialize_hex(&entry.block.header)))
    }
}

fn getblock(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let hash: BlockHash = get_hash(&p[0], "blockhash")?;
    let verbosity = opt_verbosity(&p[1], 1)?;
    let state = ctx.state();
    let entry = state.chain.get(&hash).ok_or_else(block_not_found)?;
    if verbosity <= 0 {
        Ok(json!(serialize_hex(&entry.block)))
    } else {
        Ok(block_json(&state.chain, entry, verbosity))
    }
}

fn getchaintips(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    let state = ctx.state();
    let chain = &state.chain;
    let mut tips: Vec<_> = chain.leaves();
    if !tips.iter().any(|e| e.hash == chain.tip().hash) {
        tips.push(chain.tip());
    }
    tips.sort_by_key(|e| std::cmp::Reverse(e.height));
    let tips: Vec<Value> = tips
        .iter()
        .map(|e| {
            let fork = chain.fork_point(&e.hash);
            let fork_height = chain.get(&fork).map_or(0, |f| f.height);
            let status = if chain.is_active(&e.hash) {
                "active"
            } else if e.invalid {
                "invalid"
            } else if e.undo.is_some() {
                "valid-fork"
            } else {
                "valid-headers"
            };
            json!({
                "height": e.height,
                "hash": e.hash.to_string(),
                "branchlen": e.height - fork_height,
                "status": status,
            })
        })
        .collect();
    Ok(json!(tips))
}

fn getdifficulty(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(json!(ctx.state().chain.tip().block.header.difficulty_float()))
}

fn gettxout(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let txid: Txid = get_hash(&p[0], "txid")?;
    let vout = u32::try_from(get_int(&p[1])?).map_err(|_| RpcError::new(RPC_INVALID_PARAMETER, "Invalid vout"))?;
    let include_mempool = opt_bool(&p[2], true)?;
    let outpoint = OutPoint { txid, vout };
    let state = ctx.state();
    let tip = state.chain.tip();
    let (txout, confirmations, coinbase) = if let Some(coin) = state.chain.coin(&outpoint) {
        (coin.txout.clone(), tip.height - coin.height + 1, coin.is_coinbase)
    } else if let (true, Some(txout)) = (include_mempool, state.mempool.output(&outpoint)) {
        (txout.clone(), 0, false)
    } else {
        return Ok(Value::Null);
    };
    if include_mempool && state.mempool.spender(&outpoint).is_some() {
        return Ok(Value::Null);
    }
    Ok(json!({
        "bestblock": tip.hash.to_string(),
        "confirmations": confirmations,
        "value": amount(txout.value),
        "scriptPubKey": script_pubkey_json(&txout.script_pubkey),
        "coinbase": coinbase,
    }))
}

fn getindexinfo(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let height = ctx.state().chain.height();
    let wanted = match &p[0] {
        Value::Null => None,
        v => Some(get_str(v)?.to_string()),
    };
    if wanted.as_deref().is_some_and(|w| w != "txindex") {
        return Ok(json!({}));
    }
    Ok(json!({"txindex": {"synced": true, "best_block_height": height}}))
}

// Transactions and mempool.

fn sendrawtransaction(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let tx = decode_tx(get_str(&p[0])?).ok_or_else(|| {
        RpcError::new(RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input.")
    })?;
    let max_fee_rate = get_fee_rate(&p[1], 10_000_000)?;
    let txid = ctx.state().send_raw_transaction(tx, max_fee_rate)?;
    Ok(json!(txid.to_string()))
}

fn testmempoolaccept(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let Value::Array(raw) = &p[0] else {
        return Err(type_error(&p[0], "array"));
    };
    if raw.is_empty() || raw.len() > 25 {
        return Err(RpcError::new(RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions."));
    }
    let max_fee_rate = get_fee_rate(&p[1], 10_000_000)?;
    let txs = raw
        .iter()
        .map(|v| {
            decode_tx(get_str(v)?).ok_or_else(|| {
                RpcError::new(
                    RPC_DESERIALIZATION_ERROR,
                    format!("TX decode failed: {}", get_str(v).unwrap_or_default()),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let state = ctx.state();
    let results: Vec<Value> = txs
        .iter()
        .map(|tx| {
            let mut item = json!({
                "txid": tx.compute_txid().to_string(),
                "wtxid": tx.compute_wtxid().to_string(),
            });
            match state.test_accept(tx) {
                Ok(accepted)
                    if max_fee_rate > 0
                        && accepted.fee.to_sat() > super::validation::fee_for(max_fee_rate, accepted.vsize) =>
                {
                    item["allowed"] = json!(false);
                    item["reject-reason"] = json!("max-fee-exceeded");
                }
                Ok(accepted) => {
                    item["allowed"] = json!(true);
                    item["vsize"] = json!(accepted.vsize);
                    let rate = bitcoin::Amount::from_sat(accepted.fee.to_sat() * 1000 / accepted.vsize.max(1));
                    item["fees"] = json!({
                        "base": amount(accepted.fee),
                        "effective-feerate": amount(rate),
                        "effective-includes": [tx.compute_wtxid().to_string()],
                    });
                }
                Err(reject) => {
                    let reason = match reject {
                        super::validation::Reject::MissingInputs => "missing-inputs".to_string(),
                        super::validation::Reject::Invalid(r) => r.split(", ").next().unwrap_or_default().to_string(),
                    };
                    item["allowed"] = json!(false);
                    item["reject-reason"] = json!(reason);
                }
            }
            item
        })
        .collect();
    Ok(json!(results))
}

fn getrawtransaction(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let txid: Txid = get_hash(&p[0], "parameter 1")?;
    let verbosity = opt_verbosity(&p[1], 0)?;
    let state = ctx.state();
    let chain = &state.chain;
    let genesis = chain.get(&chain.genesis_hash()).expect("genesis is stored");
    if txid.to_raw_hash() == genesis.block.header.merkle_root.to_raw_hash() {
        return Err(RpcError::new(
            RPC_INVALID_ADDRESS_OR_KEY,
            "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved",
        ));
    }
    let not_found = |what: &str| {
        RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, format!("{what}. Use gettransaction for wallet transactions."))
    };
    let given_block = match &p[2] {
        Value::Null => None,
        v => {
            let hash: BlockHash = get_hash(v, "parameter 3")?;
            chain.get(&hash).ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found"))?;
            Some(hash)
        }
    };
    let (tx, block) = if let Some(hash) = given_block {
        let (tx, entry) = chain
            .find_tx_in_block(&txid, &hash)
            .ok_or_else(|| not_found("No such transaction found in the provided block"))?;
        (tx, Some(entry))
    } else if let Some(entry) = state.mempool.get(&txid) {
        (&entry.tx, None)
    } else {
        let found = chain
            .find_active_tx(&txid)
            .or_else(|| chain.blocks_with_tx(&txid).iter().find_map(|h| chain.find_tx_in_block(&txid, h)));
        let (tx, entry) = found.ok_or_else(|| not_found("No such mempool or blockchain transaction"))?;
        (tx, Some(entry))
    };
    if verbosity <= 0 {
        return Ok(json!(serialize_hex(tx)));
    }
    let coins = block.and_then(|entry| {
        let index = entry.block.txdata.iter().position(|t| t.compute_txid() == txid)?;
        Some(entry.undo.as_ref()?.get(index.checked_sub(1)?)?.as_slice())
    });
    let mut obj = serde_json::Map::new();
    if given_block.is_some() {
        obj.insert("in_active_chain".into(), json!(block.is_some_and(|e| chain.is_active(&e.hash))));
    }
    obj.extend(tx_json(tx, true, coins.filter(|_| verbosity >= 2), verbosity >= 2));
    if let Some(entry) = block {
        obj.insert("blockhash".into(), json!(entry.hash.to_string()));
        if chain.is_active(&entry.hash) {
            obj.insert("confirmations".into(), json!(chain.confirmations(&entry.hash)));
            obj.insert("time".into(), json!(entry.block.header.time));
            obj.insert("blocktime".into(), json!(entry.block.header.time));
        } else {
            obj.insert("confirmations".into(), json!(0));
        }
    }
    Ok(Value::Object(obj))
}

fn decoderawtransaction(_: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let tx = decode_tx(get_str(&p[0])?).ok_or_else(|| RpcError::new(RPC_DESERIALIZATION_ERROR, "TX decode failed"))?;
    Ok(Value::Object(tx_json(&tx, false, None, false)))
}

fn getrawmempool(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let verbose = opt_bool(&p[0], false)?;
    let sequence = opt_bool(&p[1], false)?;
    if verbose && sequence {
        return Err(RpcError::new(RPC_INVALID_PARAMETER, "Verbose results cannot contain mempool sequence values."));
    }
    let state = ctx.state();
    let entries = state.mempool.ordered();
    if verbose {
        let map: serde_json::Map<String, Value> =
            entries.iter().map(|e| (e.txid.to_string(), mempool_entry_json(&state.mempool, e))).collect();
        return Ok(Value::Object(map));
    }
    let txids: Vec<String> = entries.iter().map(|e| e.txid.to_string()).collect();
    if sequence {
        return Ok(json!({"txids": txids, "mempool_sequence": 1}));
    }
    Ok(json!(txids))
}

fn getmempoolentry(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let txid: Txid = get_hash(&p[0], "parameter 1")?;
    let state = ctx.state();
    let entry = state
        .mempool
        .get(&txid)
        .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool"))?;
    Ok(mempool_entry_json(&state.mempool, entry))
}

fn getmempoolinfo(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    let state = ctx.state();
    let rate = |sat_per_kvb: u64| amount(bitcoin::Amount::from_sat(sat_per_kvb));
    Ok(json!({
        "loaded": true,
        "size": state.mempool.len(),
        "bytes": state.mempool.total_vsize(),
        "usage": state.mempool.total_vsize() * 4,
        "total_fee": amount(state.mempool.total_fee()),
        "maxmempool": 300_000_000u64,
        "mempoolminfee": rate(state.fees.reported_mempool_min_fee_rate()),
        "minrelaytxfee": rate(state.fees.min_relay),
        "incrementalrelayfee": rate(INCREMENTAL_RELAY_FEE_RATE),
        "unbroadcastcount": 0,
        "fullrbf": false,
    }))
}

fn estimatesmartfee(_: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let target = get_int(&p[0])?;
    if !(1..=1008).contains(&target) {
        return Err(RpcError::new(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008"));
    }
    if let Value::String(mode) = &p[1] {
        if !["unset", "economical", "conservative"].contains(&mode.to_lowercase().as_str()) {
            return Err(RpcError::new(
                RPC_INVALID_PARAMETER,
                "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"",
            ));
        }
    }
    Ok(json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}))
}

// Node.

fn getnetworkinfo(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    let min_relay = ctx.state().fees.min_relay;
    let network = |name: &str, reachable: bool| {
        json!({
            "name": name,
            "limited": !reachable,
            "reachable": reachable,
            "proxy": "",
            "proxy_randomize_credentials": false,
        })
    };
    Ok(json!({
        "version": NODE_VERSION,
        "subversion": NODE_SUBVERSION,
        "protocolversion": 70016,
        "localservices": "0000000000000c09",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": true,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [
            network("ipv4", true),
            network("ipv6", true),
            network("onion", false),
            network("i2p", false),
            network("cjdns", false),
        ],
        "relayfee": amount(bitcoin::Amount::from_sat(min_relay)),
        "incrementalfee": amount(bitcoin::Amount::from_sat(INCREMENTAL_RELAY_FEE_RATE)),
        "localaddresses": [],
        "warnings": "",
    }))
}

fn getconnectioncount(_: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(json!(0))
}

fn getpeerinfo(_: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(json!([]))
}

fn getzmqnotifications(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(match &ctx.zmq_hashblock {
        Some(address) => json!([
            { "type": "pubhashblock", "address": address, "hwm": 1000 },
            { "type": "pubrawblock", "address": address, "hwm": 1000 },
            { "type": "pubrawtx", "address": address, "hwm": 1000 },
        ]),
        None => json!([]),
    })
}

fn uptime(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(json!(ctx.started.elapsed().as_secs()))
}

fn ping(_: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    Ok(Value::Null)
}

fn stop(ctx: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    ctx.stop.cancel();
    Ok(json!("Bitcoin Core stopping"))
}

fn help(_: &RpcContext, _: &[Value]) -> Result<Value, RpcError> {
    let names: Vec<&str> = METHODS.iter().map(|s| s.name).collect();
    Ok(json!(names.join("\n")))
}

// Test controls.

fn generatetoaddress(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let n = get_int(&p[0])?;
    let script = address_script(get_str(&p[1])?)
        .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
    let n = u32::try_from(n).unwrap_or(0);
    let hashes = ctx.state().generate(n, &script)?;
    Ok(json!(hashes.iter().map(ToString::to_string).collect::<Vec<_>>()))
}

fn generateblock(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let output = get_str(&p[0])?;
    let script = descriptor_script(output)
        .or_else(|| address_script(output))
        .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address or descriptor"))?;
    let Value::Array(items) = &p[1] else {
        return Err(type_error(&p[1], "array"));
    };
    let submit = opt_bool(&p[2], true)?;
    let mut state = ctx.state();
    let mut txs = Vec::with_capacity(items.len());
    for item in items {
        let s = get_str(item)?;
        if let Ok(txid) = Txid::from_str(s) {
            let entry = state
                .mempool
                .get(&txid)
                .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, format!("Transaction {s} not in mempool.")))?;
            txs.push(entry.tx.clone());
        } else if let Some(tx) = decode_tx(s) {
            txs.push(tx);
        } else {
            return Err(RpcError::new(
                RPC_DESERIALIZATION_ERROR,
                format!("Transaction decode failed for {s}. Make sure the tx has at least one input."),
            ));
        }
    }
    let block = state.generate_block(&script, txs, submit)?;
    let mut result = json!({"hash": block.block_hash().to_string()});
    if !submit {
        result["hex"] = json!(serialize_hex(&block));
    }
    Ok(result)
}

fn submitblock(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let block: Block = deserialize_hex(get_str(&p[0])?)
        .map_err(|_| RpcError::new(RPC_DESERIALIZATION_ERROR, "Block decode failed"))?;
    if !block.txdata.first().is_some_and(Transaction::is_coinbase) {
        return Err(RpcError::new(RPC_DESERIALIZATION_ERROR, "Block does not start with a coinbase"));
    }
    match ctx.state().submit_block(block) {
        Ok(()) => Ok(Value::Null),
        Err(reason) => Ok(json!(reason)),
    }
}

fn invalidateblock(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let hash: BlockHash = get_hash(&p[0], "blockhash")?;
    ctx.state().invalidate(&hash)?;
    Ok(Value::Null)
}

fn reconsiderblock(ctx: &RpcContext, p: &[Value]) -> Result<Value, RpcError> {
    let hash: BlockHash = get_hash(&p[0], "blockhash")?;
    ctx.state().reconsider(&hash)?;
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RpcContext {
        RpcContext {
            state: Arc::new(Mutex::new(NodeState::new())),
            started: Instant::now(),
            stop: CancellationToken::new(),
            zmq_hashblock: None,
        }
    }

    #[test]
    fn named_and_positional_params() {
        let ctx = ctx();
        let by_name = dispatch(&ctx, "getblockhash", Some(&json!({"height": 0})));
        let by_position = dispatch(&ctx, "getblockhash", Some(&json!([0])));
        assert_eq!(by_name, by_position);
        let unknown = dispatch(&ctx, "getblockhash", Some(&json!({"h": 0})));
        assert_eq!(unknown.map_err(|e| e.code), Err(RPC_INVALID_PARAMETER));
        let missing = dispatch(&ctx, "getblockhash", None);
        assert_eq!(missing.map_err(|e| e.code), Err(RPC_MISC_ERROR));
        let too_many = dispatch(&ctx, "getblockcount", Some(&json!([1])));
        assert_eq!(too_many.map_err(|e| e.code), Err(RPC_MISC_ERROR));
        let wrong_type = dispatch(&ctx, "getblockhash", Some(&json!(["0"])));
        assert_eq!(wrong_type.map_err(|e| e.code), Err(RPC_TYPE_ERROR));
    }

    #[test]
    fn hash_parameters_like_bitcoind() {
        let ctx = ctx();
        let short = dispatch(&ctx, "getblockheader", Some(&json!(["abc"])));
        assert_eq!(short, Err(RpcError::new(RPC_INVALID_PARAMETER, "hash must be of length 64 (not 3, for 'abc')")));
        let not_hex = dispatch(&ctx, "getblockheader", Some(&json!(["z".repeat(64)])));
        assert_eq!(not_hex.map_err(|e| e.code), Err(RPC_INVALID_PARAMETER));
    }
}
