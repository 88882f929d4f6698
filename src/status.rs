//! `ebb status`: the services of a running `ebb up` as a table, from its `/status` endpoint.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Arguments of `ebb status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metrics address of `ebb up` (its `--metrics-port`).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    url: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the table; exit 1 when `ebb up` cannot be reached.
pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ebb status: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fetch(&args.url)) {
        Ok(status) if args.json => {
            println!("{status:#}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", table(&status));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ebb status: cannot read {}/status: {err} (is `ebb up` running?)", args.url);
            ExitCode::FAILURE
        }
    }
}

async fn fetch(url: &str) -> Result<Value, String> {
    let authority = url.trim_end_matches('/').trim_start_matches("http://");
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/status")
        .header("host", authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// The table: one row per service.
pub fn table(status: &Value) -> String {
    let headers = ["SERVICE", "DESIRED", "READY", "MODE", "PHASE", "IN FLIGHT", "QUEUED", "LAST REASON"];
    let mut rows: Vec<Vec<String>> = vec![headers.iter().map(|h| (*h).to_owned()).collect()];
    let empty = Vec::new();
    for s in status["services"].as_array().unwrap_or(&empty) {
        let text = |key: &str| match &s[key] {
            Value::String(t) => t.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        rows.push(vec![
            text("name"),
            text("desired"),
            text("ready"),
            text("mode"),
            text("phase"),
            text("in_flight"),
            text("queued"),
            text("last_reason"),
        ]);
    }
    let widths: Vec<usize> =
        (0..headers.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == row.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
