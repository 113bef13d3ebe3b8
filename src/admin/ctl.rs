//! `balancer ctl ...`: the command line for the management API, for
//! operators and scripts. It reads where the balancer is (`LB_URL`, else
//! `http://127.0.0.1:$BALANCER_PORT`) and the token (`LB_ADMIN_TOKEN`)
//! from the environment (or `.env`), like the balancer itself.
//!
//! Exit status: 0 done; 1 the balancer refused (its reason printed); 2 bad
//! usage; 3 the balancer could not be reached.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one call may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Ctl {
    /// The balancer's base URL [default: http://127.0.0.1:$BALANCER_PORT, or :13003]
    #[arg(long, env = "LB_URL")]
    pub url: Option<String>,
    /// The admin token (needed by everything but list and route)
    #[arg(long, env = "LB_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every backend with its state, weight, source and load
    List,
    /// Weight 0: its clients move to their next candidate, in-flight work finishes
    Drain { name: String },
    /// No new requests; in-flight requests and open tunnels finish
    Disable { name: String },
    /// Undo disable, drain or remove
    Enable { name: String },
    /// Set the weight in effect (0-100)
    Weight { name: String, weight: u32 },
    /// Add a backend discovery does not know (host:port)
    Add {
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Forget an added backend, or leave a discovered one out until enabled
    Remove { name: String },
    /// Which backend a client address goes to, and its fallback order
    Route { ip: IpAddr },
    /// Change the log filter (error, warn, info, debug, trace, or RUST_LOG syntax)
    Log { filter: String },
}

/// Runs one `ctl` command and prints what happened.
pub fn run(ctl: Ctl, balancer_port: u16) -> ExitCode {
    let base = ctl
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{balancer_port}"));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("balancer ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let (method, path, body) = request_of(&ctl.command);
        let token = ctl.token.as_deref();
        match call(&base, method, &path, body, token).await {
            Err(e) => {
                eprintln!("balancer ctl: cannot reach the balancer at {base}: {e}");
                ExitCode::from(3)
            }
            Ok((status, json)) if !status.is_success() => {
                let why = json["error"].as_str().unwrap_or("no reason given");
                eprintln!("balancer ctl: {status}: {why}");
                ExitCode::FAILURE
            }
            Ok((_, json)) => {
                print!("{}", render(&ctl.command, &json));
                ExitCode::SUCCESS
            }
        }
    })
}

fn enc(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn request_of(command: &Command) -> (Method, String, Option<Value>) {
    let post = |name: &str, action: &str| {
        (
            Method::POST,
            format!("/lb/backends/{}/{action}", enc(name)),
            None,
        )
    };
    match command {
        Command::List => (Method::GET, "/lb/backends".into(), None),
        Command::Drain { name } => post(name, "drain"),
        Command::Disable { name } => post(name, "disable"),
        Command::Enable { name } => post(name, "enable"),
        Command::Weight { name, weight } => {
            let (m, p, _) = post(name, "weight");
            (m, p, Some(serde_json::json!({ "weight": weight })))
        }
        Command::Add { address, weight } => (
            Method::POST,
            "/lb/backends/add".into(),
            Some(serde_json::json!({ "address": address, "weight": weight })),
        ),
        Command::Remove { name } => (Method::DELETE, format!("/lb/backends/{}", enc(name)), None),
        Command::Route { ip } => (
            Method::GET,
            format!("/lb/route?ip={}", enc(&ip.to_string())),
            None,
        ),
        Command::Log { filter } => {
            let is_level = matches!(
                filter.to_ascii_lowercase().as_str(),
                "error" | "warn" | "info" | "debug" | "trace"
            );
            let body = if is_level {
                serde_json::json!({ "level": filter })
            } else {
                serde_json::json!({ "filter": filter })
            };
            (Method::POST, "/lb/log".into(), Some(body))
        }
    }
}

/// One HTTP/1.1 exchange with the balancer: its status and JSON answer.
async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Result<(StatusCode, Value), String> {
    let base = if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    };
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("LB_URL={base:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("LB_URL={base:?}: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("LB_URL={base:?} names no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let exchange = async {
        let stream =
            tokio::net::TcpStream::connect((authority.host().trim_matches(['[', ']']), port))
                .await
                .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::USER_AGENT, "hashgate-ctl");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

/// What a successful command prints.
fn render(command: &Command, json: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    match command {
        Command::List => {
            let mut out = format!(
                "{:<28} {:<10} {:>6} {:<10} {:>9} {:>10}\n",
                "NAME", "STATE", "WEIGHT", "SOURCE", "IN-FLIGHT", "REQUESTS"
            );
            for b in json["backends"].as_array().into_iter().flatten() {
                let state = if b["drained"] == true {
                    "drained".to_owned()
                } else {
                    s(&b["state"])
                };
                let n = |v: &Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
                out.push_str(&format!(
                    "{:<28} {:<10} {:>6} {:<10} {:>9} {:>10}\n",
                    s(&b["name"]),
                    state,
                    n(&b["weight"]),
                    s(&b["source"]),
                    n(&b["in_flight"]),
                    n(&b["requests"]),
                ));
            }
            out
        }
        Command::Route { ip } => {
            let then: Vec<String> = json["order"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| s(&c["name"]))
                .collect();
            format!(
                "{ip} -> {} (strategy {}{}); order: {}\n",
                json["backend"].as_str().unwrap_or("no backend available"),
                s(&json["strategy"]),
                if json["sticky"] == true {
                    ", sticky"
                } else {
                    ", not sticky"
                },
                then.join(", ")
            )
        }
        Command::Log { .. } => format!(
            "log filter: {} (was {})\n",
            s(&json["filter"]),
            s(&json["previous"])
        ),
        _ => match json["change"].as_str() {
            Some(change) => format!("{}: {change}\n", s(&json["backend"])),
            None => format!("{}: unchanged (already so)\n", s(&json["backend"])),
        },
    }
}
