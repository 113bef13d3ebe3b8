//! A real DNS server for tests: Debian's `dnsmasq`, serving names from a
//! hosts file on 127.0.0.1:<free port>, with the TTL Docker's DNS uses (600 s).
//!
//! [`Dnsmasq::set`] rewrites the hosts file, sends SIGHUP (dnsmasq re-reads
//! `--addn-hosts` and clears its cache on SIGHUP) and waits until the server
//! answers the new set, so a test measures the balancer, not dnsmasq.
//!
//! When `dnsmasq` is not installed, [`Dnsmasq::start`] returns `None` and the
//! test skips with a notice, except under `CI`, where it fails: CI installs
//! the `dnsmasq` package.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The TTL every answer carries (Docker's embedded DNS answers 600 s).
pub const TTL: u32 = 600;

/// A running dnsmasq; killed on drop.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: PathBuf,
    hosts: PathBuf,
}

/// Where dnsmasq is, or `None` (with the reason printed) when the test must skip.
fn binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let msg = "dnsmasq is not installed (Debian package `dnsmasq`): \
                   the DNS discovery test needs a real DNS server";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("udp addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn hosts_text(records: &[(&str, IpAddr)]) -> String {
    records
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect()
}

/// Waits until dnsmasq accepts TCP (it serves UDP and TCP on one port);
/// false if it exited (port taken) or never came up.
async fn ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // Someone else's listener on a port we lost the race for? Then
            // dnsmasq exits at once: give it a moment to show that.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return matches!(child.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

impl Dnsmasq {
    /// Starts dnsmasq answering `records` (name, address), authoritative for
    /// `.test` (unknown names get NXDOMAIN, never a forward).
    pub async fn start(tag: &str, records: &[(&str, IpAddr)]) -> Option<Dnsmasq> {
        let bin = binary()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dnsmasq-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, hosts_text(records)).expect("write hosts");
        for _attempt in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.arg("--no-daemon")
                .arg("--conf-file=/dev/null")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg(format!("--addn-hosts={}", hosts.display()))
                .arg(format!("--local-ttl={TTL}"))
                .arg("--local=/test/")
                .arg("--log-queries")
                .arg(format!("--pid-file={}", dir.join("pid").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("log")).expect("log file"));
            if running_as_root() {
                cmd.arg("--user=root").arg("--group=root");
            }
            let mut child = cmd.spawn().expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if ready(&mut child, addr).await {
                return Some(Dnsmasq {
                    addr,
                    child: Some(child),
                    dir,
                    hosts,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start; see {}", dir.join("log").display());
    }

    /// Replaces the records, reloads dnsmasq and waits until it answers
    /// `name` with exactly the new addresses of that name.
    pub async fn set(&self, records: &[(&str, IpAddr)], name: &str) {
        let tmp = self.dir.join("hosts.new");
        std::fs::write(&tmp, hosts_text(records)).expect("write hosts");
        std::fs::rename(&tmp, &self.hosts).expect("replace hosts");
        let pid = self.child.as_ref().expect("dnsmasq running").id();
        // The shell's builtin `kill`: no procps needed on a minimal image.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -HUP {pid}")])
            .status()
            .expect("run sh");
        assert!(ok.success(), "SIGHUP to dnsmasq failed");
        let mut want: Vec<IpAddr> = records
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, ip)| *ip)
            .collect();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self
                .answers(name)
                .await
                .map(|(ips, _)| ips)
                .unwrap_or_default();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq still answers {got:?} for {name}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the server directly (no cache): the sorted addresses of `name`
    /// and the smallest TTL of the answer.
    pub async fn answers(&self, name: &str) -> Result<(Vec<IpAddr>, u32), String> {
        let mut ns = NameServerConfig::udp_and_tcp(self.addr.ip());
        for c in &mut ns.connections {
            c.port = self.addr.port();
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
        let mut b = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let o = b.options_mut();
        o.cache_size = 0;
        o.use_hosts_file = ResolveHosts::Never;
        o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        o.timeout = Duration::from_secs(1);
        let r = b.build().map_err(|e| e.to_string())?;
        let fqdn = format!("{name}.");
        let lookup = r
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let ttl = lookup
            .as_lookup()
            .answers()
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        Ok((ips, ttl))
    }

    /// Kills the server (the address stops answering).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        // Keep the hosts file and dnsmasq's log when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
