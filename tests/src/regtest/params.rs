//! Parameters of the JSON-RPC methods: a method's entry in the method table (name, arity, named
//! parameters, handler; the table is `rpc::METHODS`) and bitcoind's type and value checks.

use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{Address, Network, ScriptBuf, Transaction};
use serde_json::Value;

use super::codes::*;
use super::rpc::RpcContext;
use super::RpcError;

/// Runs one method on its positional parameters (as many as the method's [`Spec`] names).
pub(crate) type Handler = fn(&RpcContext, &[Value]) -> Result<Value, RpcError>;

/// A method's parameter names (for named parameters and arity checks), how many are required, and
/// the function that runs it.
pub(crate) struct Spec {
    pub name: &'static str,
    args: &'static [&'static str],
    required: usize,
    pub run: Handler,
}

pub(crate) const fn spec(name: &'static str, args: &'static [&'static str], required: usize, run: Handler) -> Spec {
    Spec { name, args, required, run }
}

fn usage(spec: &Spec) -> RpcError {
    let args: Vec<String> = spec
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| if i < spec.required { format!("\"{a}\"") } else { format!("( \"{a}\" )") })
        .collect();
    RpcError::new(RPC_MISC_ERROR, format!("{} {}", spec.name, args.join(" ")).trim_end().to_string())
}

/// Positional parameters from an array, an object of named parameters, or nothing.
pub(crate) fn positional(spec: &Spec, params: Option<&Value>) -> Result<Vec<Value>, RpcError> {
    let mut values = match params {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values.clone(),
        Some(Value::Object(named)) => {
            let mut values = vec![Value::Null; spec.args.len()];
            for (key, value) in named {
                let index =
                    spec.args.iter().position(|a| a == key).ok_or_else(|| {
                        RpcError::new(RPC_INVALID_PARAMETER, format!("Unknown named parameter {key}"))
                    })?;
                values[index] = value.clone();
            }
            while values.last() == Some(&Value::Null) {
                values.pop();
            }
            values
        }
        Some(_) => return Err(RpcError::new(RPC_INVALID_REQUEST, "Params must be an array or object")),
    };
    if values.len() > spec.args.len()
        || values.len() < spec.required
        || values[..spec.required].iter().any(Value::is_null)
    {
        return Err(usage(spec));
    }
    values.resize(spec.args.len(), Value::Null);
    Ok(values)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn type_error(value: &Value, expected: &str) -> RpcError {
    RpcError::new(RPC_TYPE_ERROR, format!("JSON value of type {} is not of expected type {expected}", type_name(value)))
}

pub(crate) fn get_str(value: &Value) -> Result<&str, RpcError> {
    value.as_str().ok_or_else(|| type_error(value, "string"))
}

pub(crate) fn get_int(value: &Value) -> Result<i64, RpcError> {
    match value {
        Value::Number(n) => n.as_i64().ok_or_else(|| RpcError::new(RPC_TYPE_ERROR, "JSON integer out of range")),
        _ => Err(type_error(value, "number")),
    }
}

pub(crate) fn opt_bool(value: &Value, default: bool) -> Result<bool, RpcError> {
    match value {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(type_error(value, "bool")),
    }
}

/// A verbosity given as a number or a boolean.
pub(crate) fn opt_verbosity(value: &Value, default: i64) -> Result<i64, RpcError> {
    match value {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(i64::from(*b)),
        _ => get_int(value),
    }
}

/// bitcoind's `ParseHashV`.
pub(crate) fn get_hash<T: FromStr>(value: &Value, name: &str) -> Result<T, RpcError> {
    let s = get_str(value)?;
    if s.len() != 64 {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
        ));
    }
    T::from_str(s)
        .map_err(|_| RpcError::new(RPC_INVALID_PARAMETER, format!("{name} must be hexadecimal string (not '{s}')")))
}

/// A fee rate in BTC/kvB (number or string), as sat/kvB.
pub(crate) fn get_fee_rate(value: &Value, default: u64) -> Result<u64, RpcError> {
    let btc = match value {
        Value::Null => return Ok(default),
        Value::Number(n) => n.as_f64().unwrap_or(-1.0),
        Value::String(s) => s.parse::<f64>().unwrap_or(-1.0),
        _ => return Err(type_error(value, "number")),
    };
    if !(0.0..21e6).contains(&btc) {
        return Err(RpcError::new(RPC_TYPE_ERROR, "Invalid amount"));
    }
    Ok((btc * 1e8).round() as u64)
}

pub(crate) fn decode_tx(hex: &str) -> Option<Transaction> {
    deserialize_hex::<Transaction>(hex).ok()
}

pub(crate) fn address_script(s: &str) -> Option<ScriptBuf> {
    let address = Address::<NetworkUnchecked>::from_str(s).ok()?;
    Some(address.require_network(Network::Regtest).ok()?.script_pubkey())
}

/// `addr(...)` and `raw(...)` descriptors, checksum optional.
pub(crate) fn descriptor_script(s: &str) -> Option<ScriptBuf> {
    let body = s.split('#').next()?;
    if let Some(inner) = body.strip_prefix("addr(").and_then(|r| r.strip_suffix(')')) {
        return address_script(inner);
    }
    let inner = body.strip_prefix("raw(")?.strip_suffix(')')?;
    Some(ScriptBuf::from_bytes(hex::decode(inner).ok()?))
}
