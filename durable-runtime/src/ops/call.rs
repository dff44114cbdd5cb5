//! `host call CLASS NAME METHOD 'JSON'`: one call to a running host over QUIC, with
//! the arguments as a JSON object by name (as the HTTP gateway takes them) turned
//! into the method's postcard tuple by this binary's own classes.

use crate::class::JsonArgs;
use durable_client::wire::{CallRequest, Response};
use durable_client::{CallError, Client, ClientConfig, ObjectId};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to reach the host: its address, and the CA, token and client
/// certificate files (each defaulting to the data directory's).
#[derive(Debug)]
pub(crate) struct CallTarget {
    pub(crate) connect: SocketAddr,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) deadline: Duration,
    pub(crate) request_id: Option<String>,
}

impl CallTarget {
    fn config(&self) -> Result<ClientConfig, String> {
        let from_dir = |name: &str| self.data_dir.as_ref().map(|d| d.join("tls").join(name));
        let ca = self
            .ca
            .clone()
            .or_else(|| from_dir("ca.pem"))
            .ok_or("give --data-dir DIR, or --ca FILE (and --token-file FILE)")?;
        let ca_pem = std::fs::read(&ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
        let token = match self.token_file.clone().or_else(|| from_dir("token")) {
            Some(path) if path.exists() || self.cert.is_none() => std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?
                .trim()
                .to_string(),
            _ => String::new(),
        };
        let mut config = ClientConfig::new(self.connect, ca_pem, token);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
            config = config.with_client_cert(read(cert)?, read(key)?);
        }
        config.deadline = self.deadline;
        Ok(config)
    }
}

/// Parse a request id: 32 hex digits.
fn request_id(s: &str) -> Result<[u8; 16], String> {
    let id: ObjectId = s
        .parse()
        .map_err(|_| format!("--request-id {s:?} is not 32 hex digits"))?;
    Ok(*id.as_bytes())
}

/// A failed call as the JSON the HTTP gateway answers with.
fn error_json(kind: &str, message: String, retry: durable_client::Retry) -> Value {
    json!({"error": {"kind": kind, "message": message, "retry": retry.as_str()}})
}

/// Run the call; `Ok` is the JSON to print for a successful call, `Err` the JSON
/// error (the method's own error, or the framework's) to print before failing.
pub(crate) async fn call(
    host: &crate::host::Host,
    target: &CallTarget,
    class: &str,
    name: &str,
    method: &str,
    args: &str,
) -> Result<Value, Value> {
    let usage = |m: String| error_json("bad_arguments", m, durable_client::Retry::NotApplied);
    let (json, info) = host
        .json_method(class, method)
        .map_err(|(kind, m)| error_json(kind, m, durable_client::Retry::NotApplied))?;
    let args: JsonArgs =
        match serde_json::from_str::<Value>(if args.trim().is_empty() { "{}" } else { args }) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(usage(
                    "the arguments must be a JSON object by name, e.g. '{\"by\": 5}'".into(),
                ))
            }
            Err(e) => return Err(usage(format!("the arguments are not JSON: {e}"))),
        };
    let encoded = (json.encode_args)(&args).map_err(usage)?;
    let request_id = match &target.request_id {
        Some(s) => request_id(s).map_err(usage)?,
        None => *ObjectId::random().as_bytes(),
    };
    let object = super::object_id(class, name);
    let request = CallRequest {
        request_id,
        class: class.to_string(),
        object,
        name: (object.to_string() != name).then(|| name.to_string()),
        method: method.to_string(),
        fingerprint: info.fingerprint,
        timeout_ms: target.deadline.as_millis() as u64,
        args: encoded,
    };
    let config = target
        .config()
        .map_err(|m| error_json("connect", m, durable_client::Retry::NotApplied))?;
    let client = Client::connect(config)
        .await
        .map_err(|e| error_json("connect", e.to_string(), durable_client::Retry::NotApplied))?;
    let answer = client.call_raw_for(&request, target.deadline).await;
    client.close();
    match answer {
        Ok(Response::Return(bytes)) => (json.decode_return)(&bytes)
            .map_err(|m| error_json("decode", m, durable_client::Retry::Indeterminate)),
        Ok(Response::AppError(bytes)) => {
            let body = (json.decode_error)(&bytes).unwrap_or(Value::Null);
            let mut e = error_json(
                "application",
                format!("{class}.{method} returned an error"),
                durable_client::Retry::FailedInMethod,
            );
            e["error"]["body"] = body;
            Err(e)
        }
        Ok(Response::Error(wire)) => {
            let retry = wire.retry();
            let e: CallError = wire.into();
            Err(error_json(&kind(&e), e.to_string(), retry))
        }
        Ok(other) => Err(error_json(
            "protocol",
            format!("unexpected answer {other:?}"),
            durable_client::Retry::Indeterminate,
        )),
        Err(e) => {
            let retry = e.retry();
            Err(error_json(&kind(&e), e.to_string(), retry))
        }
    }
}

/// A call error's kind in snake case (`Overloaded` → `overloaded`).
fn kind(e: &CallError) -> String {
    let debug = format!("{e:?}");
    let name = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("error");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
