//! The demo model split in two roles, as prefill/decode disaggregation serves a large model: a prefill pod
//! answers `POST /v1/prefill` (the prompt's share it "computes"), and a decode pod (the entry, which takes the
//! completions) asks every prefill peer of its instance for its share before it generates. A request that gets
//! an answer has therefore gone through both roles; a peer that fails makes it a 502 naming the peer.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::api::ApiError;

/// The part the demo model plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The whole model in one process (the default).
    Whole,
    /// Answers `POST /v1/prefill` only.
    Prefill,
    /// Serves completions, calling its prefill peers (`--prefill-peers`) for each.
    Decode,
}

/// The internal endpoint of a prefill pod.
pub const PREFILL_PATH: &str = "/v1/prefill";

/// Longest a decode pod waits for a prefill peer.
const PREFILL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a prefill pod answers: who it is (`EBB_POD`, `EBB_INSTANCE` from `ebb up`) and the tokens it was sent.
pub fn prefill_answer(listen: SocketAddr, prompt_tokens: u64) -> Value {
    let pod = std::env::var("EBB_POD").unwrap_or_else(|_| listen.to_string());
    let instance = std::env::var("EBB_INSTANCE").ok();
    json!({"pod": pod, "instance": instance, "prompt_tokens": prompt_tokens})
}

/// Asks every prefill peer for its share of a prompt of `prompt_tokens`; the names of the pods that answered,
/// in `peers`' order, or a 502 naming the first peer that failed.
pub async fn prefill(peers: &[SocketAddr], prompt_tokens: u32) -> Result<Vec<String>, ApiError> {
    let calls = peers.iter().map(|peer| async move {
        match tokio::time::timeout(PREFILL_TIMEOUT, call(*peer, prompt_tokens)).await {
            Ok(Ok(pod)) => Ok(pod),
            Ok(Err(why)) => Err(failed(*peer, &why)),
            Err(_) => Err(failed(*peer, &format!("no answer within {PREFILL_TIMEOUT:?}"))),
        }
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

fn failed(peer: SocketAddr, why: &str) -> ApiError {
    ApiError { status: 502, message: format!("prefill peer {peer} failed: {why}"), param: None, code: None }
}

/// One `POST /v1/prefill`: the answering pod's name.
async fn call(peer: SocketAddr, prompt_tokens: u32) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(peer).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let body = json!({"prompt_tokens": prompt_tokens}).to_string();
    let request = Request::post(PREFILL_PATH)
        .header("host", peer.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), 64 << 10).collect().await.map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_slice(&body.to_bytes()).map_err(|e| format!("a bad answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}: {body}"));
    }
    body["pod"].as_str().map(str::to_owned).ok_or_else(|| format!("an answer without a pod: {body}"))
}

/// Parses `--prefill-peers`: `HOST:PORT` addresses, comma-separated (`EBB_PEERS_PREFILL` from `ebb up`).
pub fn parse_peers(text: &str) -> Result<Vec<SocketAddr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| format!("{p:?} is not a HOST:PORT address")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_comma_separated_addresses() {
        let peers = parse_peers("127.0.0.2:8000, 127.0.0.3:8000,").unwrap();
        assert_eq!(peers, ["127.0.0.2:8000".parse().unwrap(), "127.0.0.3:8000".parse().unwrap()]);
        assert!(parse_peers("somewhere").unwrap_err().contains("\"somewhere\""));
        assert!(parse_peers("").unwrap().is_empty());
    }
}
