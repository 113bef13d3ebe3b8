//! `/metrics` read by the tools people use: a real Prometheus server
//! (Debian's `prometheus`, started here on loopback, scraping every second)
//! whose HTTP query API must report the target up and the request counter
//! at exactly what the test sent; and the reference parsers of the Python
//! `prometheus_client` package (OpenMetrics and the classic text format).
//!
//! Without Prometheus or the Python package the test is skipped with a
//! notice, unless `CI` is set: there it fails (`.ci/run` installs both).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A Prometheus server scraping `target`; killed on drop.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn missing(what: &str) -> Option<()> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} (CI must provide it: .ci/run installs it)"
    );
    eprintln!("SKIPPED: {what}");
    None
}

impl Prometheus {
    fn start(target: SocketAddr) -> Option<Prometheus> {
        let bin = std::env::var_os("PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
        if !bin.is_file() {
            missing(&format!(
                "{} not found (Debian package `prometheus`)",
                bin.display()
            ))?;
        }
        let dir = std::env::temp_dir().join(format!(
            "hashgate-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: hashgate\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Some(Prometheus { addr, child, dir })
    }

    /// The value of an instant query that yields one sample, if any.
    async fn query(&self, q: &str) -> Option<f64> {
        let q = percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC);
        let r = get(self.addr, &format!("/api/v1/query?query={q}"))
            .await
            .ok()?;
        let j = r.json();
        let result = j["data"]["result"].as_array()?;
        let v = result.first()?["value"][1].as_str()?;
        v.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_balancer_and_counts_what_was_sent() {
    let backends = backends(3).await;
    let lb = TestBalancer::start(&[
        ("BACKEND_HOSTS", hosts(&backends)),
        ("HEALTH_INTERVAL_SECS", "1".into()),
    ])
    .await;
    lb.wait_healthy(3).await;
    let Some(prom) = Prometheus::start(lb.addr) else {
        return;
    };

    // 141 requests over 40 clients.
    let mut sent = 0;
    for i in 0..40u32 {
        let mut c = Client::connect_from(client_ip(i), lb.addr).await.unwrap();
        for _ in 0..(3 + i % 2 + u32::from(i == 0)) {
            assert_eq!(c.get("/counted").await.unwrap().status, 200);
            sent += 1;
        }
    }
    assert_eq!(sent, 141);

    let up = wait_for(
        "Prometheus to scrape the balancer",
        Duration::from_secs(60),
        || async { prom.query(r#"up{job="hashgate"}"#).await },
    )
    .await;
    assert_eq!(up, 1.0, "prometheus log:\n{}", prom.log());
    let counted = wait_for(
        "the request counter in Prometheus",
        Duration::from_secs(30),
        || async {
            let v = prom
                .query(r#"sum(hashgate_requests_total{job="hashgate"})"#)
                .await?;
            (v == f64::from(sent)).then_some(v)
        },
    )
    .await;
    assert_eq!(counted, f64::from(sent));
    let twoxx = prom
        .query(r#"sum(hashgate_requests_total{job="hashgate",class="2xx"})"#)
        .await;
    assert_eq!(twoxx, Some(f64::from(sent)));
    let buckets = prom
        .query(r#"sum(hashgate_backend_response_seconds_count{job="hashgate"})"#)
        .await;
    assert_eq!(
        buckets,
        Some(f64::from(sent)),
        "the latency histogram counts every answer"
    );
    let states = prom
        .query(r#"sum(hashgate_backend_state{job="hashgate",state="up"})"#)
        .await;
    assert_eq!(states, Some(3.0));
    let info = prom.query(r#"hashgate_build_info{job="hashgate"}"#).await;
    assert_eq!(info, Some(1.0));

    // The Python reference parsers read both formats.
    let openmetrics = {
        let mut c = Client::connect(lb.addr).await.unwrap();
        let r = c
            .send(
                "GET",
                "/metrics",
                &[("accept", "application/openmetrics-text; version=1.0.0")],
                Default::default(),
            )
            .await
            .unwrap();
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        String::from_utf8(r.body.to_vec()).unwrap()
    };
    let classic = get(lb.addr, "/metrics").await.unwrap();
    assert!(
        classic.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let classic = String::from_utf8(classic.body.to_vec()).unwrap();
    for (parser, text) in [("openmetrics", &openmetrics), ("classic", &classic)] {
        let Some(total) = python_sum(parser, text) else {
            return;
        };
        assert_eq!(
            total,
            f64::from(sent),
            "{parser} parser: hashgate_requests_total"
        );
    }
    drop(prom);
    lb.stop().await.unwrap();
}

/// Parses `text` with prometheus_client's `parser` and returns the sum of
/// `hashgate_requests_total` (`None`: skipped, no package).
fn python_sum(parser: &str, text: &str) -> Option<f64> {
    let module = match parser {
        "openmetrics" => "prometheus_client.openmetrics.parser",
        _ => "prometheus_client.parser",
    };
    let script = format!(
        "import sys\n\
         from {module} import text_string_to_metric_families as parse\n\
         total = 0.0\n\
         names = set()\n\
         for family in parse(sys.stdin.read()):\n\
         \x20   names.add(family.name)\n\
         \x20   for s in family.samples:\n\
         \x20       if s.name == 'hashgate_requests_total':\n\
         \x20           total += s.value\n\
         for want in ['hashgate_requests', 'hashgate_backend_response_seconds', 'hashgate_backend_state', 'hashgate_client_connections', 'hashgate_discovery_refreshes', 'hashgate_rate_limited_requests']:\n\
         \x20   assert want in names, (want, sorted(names))\n\
         print(total)\n"
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python)
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status();
    if !check.is_ok_and(|s| s.success()) {
        missing(
            "the Python package prometheus_client is not installed (pip install prometheus-client)",
        )?;
    }
    let mut child = Command::new(&python)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{parser} parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a number"),
    )
}
