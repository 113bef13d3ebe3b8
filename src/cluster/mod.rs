//! The local launcher behind `cargo run --bin cluster`: `INSTANCE_COUNT` API
//! processes on `START_PORT` upward and the balancer on `BALANCER_PORT`
//! pointed at them (port-range discovery), on the embedded database unless
//! MySQL is configured.
//!
//! Each instance is its own OS process (see [`child`] for how without sibling
//! binaries), supervised by [`supervise`]: crashes are restarted with
//! back-off, output is relayed under the child's name, and SIGINT/SIGTERM
//! stop every child gracefully before the launcher exits 0. Ports are checked
//! before anything starts, so a busy port is reported by number and the
//! launcher exits non-zero instead of half-starting.

pub mod child;
pub mod supervise;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{ConfigError, Env};
use crate::health::selfcheck;
use crate::shutdown::Shutdown;
use supervise::{Event, Spec};

/// The launcher's settings (`INSTANCE_COUNT`, `START_PORT`, `BALANCER_PORT`,
/// `WORKER_COUNT`, `WORKER_START_PORT`; flags `--instances`, `--start-port`,
/// `--balancer-port`, `--no-balancer`, `--workers` override them).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub instances: u16,
    pub start_port: u16,
    pub balancer_port: u16,
    pub balancer: bool,
    /// Sample workers to start (render, parse, combo, render, ...).
    pub workers: u16,
    /// The first worker's port (5001, as the replaced system uses).
    pub worker_start_port: u16,
    /// Whether the instances use the embedded database (then the launcher
    /// creates a development key when it starts workers).
    pub embedded_db: bool,
    /// `HEALTH_INTERVAL_SECS` for the balancer child: 2 s unless set, so a
    /// killed instance shows as down on `/lb` at once in local development.
    pub health_interval: String,
    /// `TRUSTED_PROXIES` for the instances: whatever is configured plus
    /// loopback, where the cluster's own balancer connects from.
    pub api_trusted_proxies: String,
}

impl ClusterConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let instances = env.range_or("INSTANCE_COUNT", 5, 1, 100)?;
        let start_port = env.port_or("START_PORT", 13004)?;
        env.port_run("START_PORT", start_port, "INSTANCE_COUNT", instances)?;
        let health_interval = env.secs_or("HEALTH_INTERVAL_SECS", 2)?.as_secs();
        let workers = env.range_or("WORKER_COUNT", 0, 0, 100)?;
        let worker_start_port = env.port_or("WORKER_START_PORT", 5001)?;
        env.port_run(
            "WORKER_START_PORT",
            worker_start_port,
            "WORKER_COUNT",
            workers,
        )?;
        Ok(ClusterConfig {
            instances,
            start_port,
            balancer_port: env.port_or("BALANCER_PORT", 13003)?,
            balancer: true,
            workers,
            worker_start_port,
            embedded_db: crate::store::DbConfig::from_env(env)?.kind() == "sqlite",
            health_interval: health_interval.to_string(),
            api_trusted_proxies: {
                let nets = env.cidrs("TRUSTED_PROXIES", "")?;
                let mut list: Vec<String> = nets.iter().map(ToString::to_string).collect();
                list.extend(["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
                list.join(",")
            },
        })
    }

    fn api_ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.instances).map(|i| self.start_port + i)
    }

    fn worker_ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.workers).map(|i| self.worker_start_port + i)
    }

    /// The service type of worker `i`: render, parse, combo, render, ...
    fn worker_type(i: usize) -> &'static str {
        ["render", "parse", "combo"][i % 3]
    }

    /// Where workers register and clients dispatch: the balancer, or the
    /// first instance without one.
    fn entry_port(&self) -> u16 {
        if self.balancer {
            self.balancer_port
        } else {
            self.start_port
        }
    }

    /// Every child to start: the instances, the balancer, the workers
    /// (`run` starts the last two once the instances answer).
    fn specs(&self) -> Vec<Spec> {
        const COLOURS: [u8; 6] = [32, 33, 34, 35, 36, 92];
        let mut specs: Vec<Spec> = self
            .api_ports()
            .enumerate()
            .map(|(i, port)| Spec {
                name: format!("api-{}", i + 1),
                kind: "api",
                port,
                env: vec![
                    ("PORT".into(), port.to_string()),
                    ("TRUSTED_PROXIES".into(), self.api_trusted_proxies.clone()),
                ],
                // Every instance must have its own identity (the default,
                // hostname:port), whatever `.env` says.
                env_remove: vec!["INSTANCE_ID"],
                colour: COLOURS[i % COLOURS.len()],
            })
            .collect();
        if self.balancer {
            specs.push(Spec {
                name: "lb".into(),
                kind: "balancer",
                port: self.balancer_port,
                env: vec![
                    ("BALANCER_PORT".into(), self.balancer_port.to_string()),
                    ("BACKEND_HOST".into(), "127.0.0.1".into()),
                    ("BACKEND_START_PORT".into(), self.start_port.to_string()),
                    ("BACKEND_COUNT".into(), self.instances.to_string()),
                    ("HEALTH_INTERVAL_SECS".into(), self.health_interval.clone()),
                ],
                env_remove: vec!["BACKEND_HOSTS", "BACKEND_DNS"],
                colour: 97,
            });
        }
        for (i, port) in self.worker_ports().enumerate() {
            let ty = Self::worker_type(i);
            specs.push(Spec {
                name: format!("{ty}-{}", i / 3 + 1),
                kind: "worker",
                port,
                env: vec![
                    ("WORKER_TYPE".into(), ty.into()),
                    ("WORKER_PORT".into(), port.to_string()),
                    ("WORKER_LISTEN_HOST".into(), "127.0.0.1".into()),
                    ("WORKER_ADVERTISE_HOST".into(), "127.0.0.1".into()),
                    (
                        "MASTER_URL".into(),
                        format!("http://127.0.0.1:{}", self.entry_port()),
                    ),
                ],
                env_remove: vec!["WORKER_NAME"],
                colour: 90,
            });
        }
        specs
    }
}

/// Why the launcher gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "port {port} is already in use ({source}); free it or choose other ports with --start-port / --balancer-port"
    )]
    PortInUse { port: u16, source: std::io::Error },
    #[error("cannot find the cluster executable: {0}")]
    NoExe(std::io::Error),
    #[error("{name}: {reason}")]
    Child { name: String, reason: String },
}

/// Starts and supervises the cluster until `shutdown`, then stops every child.
pub async fn run(
    config: ClusterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ClusterError> {
    let mut ports: Vec<u16> = config.api_ports().collect();
    if config.balancer {
        ports.push(config.balancer_port);
    }
    ports.extend(config.worker_ports());
    check_ports_free(&ports)?;
    let exe = Arc::new(std::env::current_exe().map_err(ClusterError::NoExe)?);
    let (stop_tx, stop) = Shutdown::manual();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    // The instances first; the balancer and the workers once the instances
    // answer `/health` (or after INSTANCES_READY_WAIT): a balancer started
    // earlier finds instances still opening their database, marks them
    // down at its first check, and answers 503 until the next one.
    let (instances, rest): (Vec<Spec>, Vec<Spec>) =
        config.specs().into_iter().partition(|s| s.kind == "api");
    for spec in instances {
        let task = supervise::supervise(exe.clone(), spec, events_tx.clone(), stop.clone());
        tasks.push(tokio::spawn(task));
    }
    let rest_started = {
        let (exe, events_tx, stop) = (exe.clone(), events_tx.clone(), stop.clone());
        let ports: Vec<u16> = config.api_ports().collect();
        tokio::spawn(async move {
            let waited = Instant::now();
            while Instant::now() - waited < INSTANCES_READY_WAIT {
                if not_healthy(&ports).await.is_empty() {
                    break;
                }
                tokio::select! {
                    () = stop.wait() => return Vec::new(),
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            rest.into_iter()
                .map(|spec| {
                    let task =
                        supervise::supervise(exe.clone(), spec, events_tx.clone(), stop.clone());
                    tokio::spawn(task)
                })
                .collect::<Vec<_>>()
        })
    };
    drop(events_tx);
    tokio::spawn(announce_when_ready(config.clone(), stop.clone()));

    let outer = Shutdown::from_future(shutdown);
    let result = loop {
        tokio::select! {
            () = outer.wait() => break Ok(()),
            ev = events.recv() => match ev {
                Some(Event::Started { name, pid }) => {
                    tracing::debug!(child = %name, pid, "child running");
                }
                Some(Event::Fatal { name, reason }) => break Err(ClusterError::Child { name, reason }),
                None => break Ok(()),
            },
        }
    };
    tracing::info!("stopping every instance");
    let _ = stop_tx.send(true);
    tasks.extend(rest_started.await.unwrap_or_default());
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("cluster stopped");
    result
}

/// Where the workers are and, on the embedded database, a development key
/// and a `curl` that dispatches through the balancer. Waits until the
/// workers have registered and the instances have seen them.
async fn gateway_hint(config: &ClusterConfig) -> String {
    let entry = config.entry_port();
    let ports: Vec<u16> = config.worker_ports().collect();
    let first = ports.first().copied().unwrap_or(config.worker_start_port);
    let last = ports.last().copied().unwrap_or(first);
    let mut out = format!(
        "  workers          {} (render, parse, combo, ...) on ports {first}-{last}, registered through port {entry}\n",
        config.workers
    );
    // Registered, then one registry refresh for the instances to see them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !workers_registered(&ports).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if !config.embedded_db {
        out.push_str(&format!(
            "  API key          create one with `cargo run --bin api -- keys create --name dev` (same database settings), then\n  \
             dispatch         curl -s -X POST http://127.0.0.1:{entry}/api/v1/render -H 'Authorization: Bearer <key>' -H 'Content-Type: application/json' -d '{{\"prompt\":\"hello\"}}'\n"
        ));
        return out;
    }
    match dev_key().await {
        Ok((name, secret)) => out.push_str(&format!(
            "  API key          {name} (development key, created now; `cargo run --bin api -- keys list`)\n  \
             dispatch         curl -s -X POST http://127.0.0.1:{entry}/api/v1/render -H 'Authorization: Bearer {secret}' -H 'Content-Type: application/json' -d '{{\"prompt\":\"hello\"}}'\n  \
             usage            curl -s http://127.0.0.1:{entry}/api/v1/usage -H 'Authorization: Bearer {secret}'\n"
        )),
        Err(e) => out.push_str(&format!("  API key          could not create a development key: {e}\n")),
    }
    out
}

/// Whether every worker's `/health` says it has a worker id.
async fn workers_registered(ports: &[u16]) -> bool {
    let ports = ports.to_vec();
    tokio::task::spawn_blocking(move || {
        ports.iter().all(|&p| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
            selfcheck::fetch(addr, "/health", selfcheck::TIMEOUT)
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v["workerId"].as_i64())
                .is_some_and(|id| id > 0)
        })
    })
    .await
    .unwrap_or(false)
}

/// A new key `dev-<time>` in the embedded database the instances share.
async fn dev_key() -> Result<(String, String), String> {
    let env = Env::from_process();
    let db = crate::store::DbConfig::from_env(&env).map_err(|e| e.to_string())?;
    let store = crate::store::Store::open(db).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let name = format!("dev-{}", crate::store::now_ms() / 1000);
    let result = crate::api::cli::create_key(&store, &name).await;
    store.close().await;
    result
        .map(|(secret, row)| (row.name, secret))
        .map_err(|e| e.to_string())
}

/// Binds each port briefly on every interface, as the children will.
fn check_ports_free(ports: &[u16]) -> Result<(), ClusterError> {
    for &port in ports {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|source| ClusterError::PortInUse { port, source })?;
    }
    Ok(())
}

/// How long the balancer and workers wait for the instances to answer
/// `/health` before they start anyway.
const INSTANCES_READY_WAIT: Duration = Duration::from_secs(30);

/// The ports among `ports` whose `/health` does not answer 200 now.
async fn not_healthy(ports: &[u16]) -> Vec<u16> {
    let probe = ports.to_vec();
    tokio::task::spawn_blocking(move || {
        probe
            .into_iter()
            .filter(|&p| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                !matches!(
                    selfcheck::probe(addr, "/health", selfcheck::TIMEOUT),
                    Ok(200)
                )
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Waits until every instance (and the balancer) answers `/health` with 200,
/// then prints where to look. Warns once if that takes unusually long.
async fn announce_when_ready(config: ClusterConfig, stop: Shutdown) {
    let started = Instant::now();
    let mut warned = false;
    let mut targets: Vec<u16> = config.api_ports().collect();
    if config.balancer {
        targets.push(config.balancer_port);
    }
    targets.extend(config.worker_ports());
    loop {
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let down = not_healthy(&targets).await;
        if down.is_empty() {
            break;
        }
        if !warned && started.elapsed() > Duration::from_secs(60) {
            warned = true;
            tracing::warn!(not_healthy = ?down, "still waiting for these ports to answer /health");
        }
    }
    let api = config.start_port;
    let mut msg = format!(
        "\nhashgate cluster is up: {} API instances on ports {}-{}",
        config.instances,
        api,
        api + config.instances - 1
    );
    if config.balancer {
        let lb = config.balancer_port;
        msg.push_str(&format!(
            " behind the balancer on {lb}\n  balancer status  http://127.0.0.1:{lb}/lb\n  \
             balancer health  http://127.0.0.1:{lb}/health\n  through balancer http://127.0.0.1:{lb}/api/client-ip"
        ));
    }
    msg.push_str(&format!(
        "\n  instance page    http://127.0.0.1:{api}/status.html\n  instance health  http://127.0.0.1:{api}/health\n"
    ));
    if config.workers > 0 {
        msg.push_str(&gateway_hint(&config).await);
    }
    msg.push_str("Press Ctrl-C to stop everything.\n");
    println!("{msg}");
    tracing::info!(elapsed = ?started.elapsed(), "cluster healthy");
}
