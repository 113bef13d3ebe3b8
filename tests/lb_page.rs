//! The `/lb` status page in a real browser: Debian's headless Chromium loads
//! it from a balancer with six backends (one failing its health check, one
//! disabled and one drained by an operator) and live traffic. The test
//! checks the DOM Chromium built (with scripts disabled: the page needs
//! none), the charts drawn from that traffic, that nothing sticks out
//! sideways from 360 px to 1920 px, and takes screenshots at 360 px and
//! 1920 px, kept under `target/tmp/lb-page/` (look at them after a CSS
//! change).
//!
//! Without Chromium the test is skipped with a notice, unless `CI` is set:
//! there a missing browser is a failure (`.ci/run` installs it). `CHROMIUM`
//! overrides the binary (default `/usr/bin/chromium`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

/// One Chromium run; generous, as CI machines are slow and busy.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_page_in_headless_chromium() {
    let Some(chromium) = Chromium::find() else {
        return;
    };
    let backends = backends(6).await;
    let lb = TestBalancer::start(&[
        ("BACKEND_HOSTS", hosts(&backends)),
        ("HEALTH_INTERVAL_SECS", "1".into()),
        ("HEALTH_TIMEOUT_MS", "500".into()),
        ("HEALTH_RISE", "2".into()),
        ("HEALTH_FALL", "2".into()),
        ("LB_ADMIN_TOKEN", "lb-page-test-token-0123".into()),
    ])
    .await;
    lb.wait_healthy(6).await;
    for (b, action) in [(&backends[4], "disable"), (&backends[5], "drain")] {
        let mut c = Client::connect(lb.addr).await.expect("connect");
        let r = c
            .send(
                "POST",
                &format!("/lb/backends/{}/{action}", b.addr),
                &[("authorization", "Bearer lb-page-test-token-0123")],
                Default::default(),
            )
            .await
            .expect("management call");
        assert_eq!(r.status, 200, "{action}: {r:?}");
    }
    let expected = |addr: &str| -> (&str, &str) {
        if addr == backends[4].addr.to_string() {
            ("disabled", "disabled")
        } else if addr == backends[5].addr.to_string() {
            ("draining", "drained")
        } else if addr == backends[2].addr.to_string() {
            ("down", "down")
        } else {
            ("up", "up")
        }
    };

    let down = backends[2].addr.to_string();
    backends[2].set_healthy(false);
    wait_for(
        &format!("{down} marked down"),
        Duration::from_secs(15),
        || async {
            let s = lb.status().await;
            s["backends"]
                .as_array()?
                .iter()
                .any(|b| b["address"] == down.as_str() && b["state"] == "down")
                .then_some(())
        },
    )
    .await;

    // Traffic, a few clients that stay connected and one slow request in
    // flight, so every column of the page has something to show.
    placement(lb.addr, 120).await;
    let mut connected = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect_from(client_ip(500 + i), lb.addr)
            .await
            .expect("connect");
        c.get("/").await.expect("GET through the balancer");
        connected.push(c);
    }
    let addr = lb.addr;
    let slow = tokio::spawn(async move { get_from(client_ip(900), addr, "/slow?ms=60000").await });
    wait_for("a request in flight", Duration::from_secs(10), || async {
        (lb.status().await["totals"]["active"].as_u64() >= Some(1)).then_some(())
    })
    .await;

    let url = format!("http://{}/lb", lb.addr);
    let out = chromium
        .run(&["--window-size=1440,900", "--dump-dom", &url])
        .await;
    let dom = String::from_utf8_lossy(&out.stdout);
    // Nothing for a script to do (the screenshots below are taken with
    // scripts disabled; --dump-dom itself needs them).
    assert!(!dom.contains("<script"), "the page needs no script");
    assert!(
        dom.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "the page refreshes itself every 5 s:\n{dom}"
    );
    assert!(
        dom.contains(r#"<table id="backends">"#),
        "a backend table:\n{dom}"
    );
    for b in &backends {
        let (state, label) = expected(&b.addr.to_string());
        let row = backend_row(&dom, &b.addr.to_string())
            .unwrap_or_else(|| panic!("no row for backend {}:\n{dom}", b.addr));
        assert!(
            row.contains(&format!(r#"data-state="{state}""#))
                && row.contains(&format!(r#"<span class="badge {state}">{label}</span>"#)),
            "backend {} is shown as {label}:\n{row}",
            b.addr
        );
        assert!(
            row.contains("%</span>"),
            "backend {} shows its share of the hash space:\n{row}",
            b.addr
        );
    }
    assert!(
        dom.contains(r#"<div class="v">static<span class="badge ok">ok</span>"#),
        "the discovery mode and its result:\n{dom}"
    );
    assert!(
        dom.contains("3 of 6 backends up"),
        "the headline counts the healthy backends:\n{dom}"
    );
    assert!(
        dom.contains(r#"<div class="v">maglev</div>"#)
            && dom.contains("sticky: each client keeps its backend"),
        "the strategy and whether it is sticky:\n{dom}"
    );
    // The charts, drawn from the traffic above: a series for every backend
    // that answered, a scale, and no "no traffic" notice.
    for id in ["chart-rps", "chart-p99"] {
        let chart = dom
            .split_once(&format!(r#"<figure class="chart" id="{id}">"#))
            .and_then(|(_, rest)| rest.split_once("</figure>"))
            .map(|(c, _)| c)
            .unwrap_or_else(|| panic!("no {id} chart:\n{dom}"));
        assert!(
            chart.contains("<svg") && chart.contains("<polyline"),
            "{id} draws lines:\n{chart}"
        );
        assert!(
            !chart.contains("no traffic"),
            "{id} saw the traffic:\n{chart}"
        );
        for b in backends
            .iter()
            .filter(|b| expected(&b.addr.to_string()).0 == "up")
        {
            assert!(
                chart.contains(&format!(
                    r#"<polyline class="dot" data-backend="{}""#,
                    b.addr
                )) || chart.contains(&format!(r#"<polyline data-backend="{}""#, b.addr)),
                "{id} has a line for {}:\n{chart}",
                b.addr
            );
        }
    }
    let rps = dom.split_once(r#"id="chart-rps""#).unwrap().1;
    let values: Vec<f64> = rps
        .split(r#"data-value=""#)
        .skip(1)
        .filter_map(|v| v.split('"').next()?.parse().ok())
        .collect();
    let legend_rates = rps
        .split("</ul>")
        .next()
        .unwrap_or("")
        .matches("/s</b>")
        .count();
    assert!(
        legend_rates >= 4,
        "the legend gives each backend's rate:\n{rps}"
    );
    assert!(values.len() >= 4, "a latest point per backend:\n{rps}");

    // Nothing sticks out sideways, from a small phone to a laptop, and the
    // backend table turns into cards where it would not fit. `--window-size`
    // is no help here (with --dump-dom Chromium keeps the window at least
    // 500 px wide), so a probe page holds copies of /lb in iframes of exact
    // widths and measures them; the page itself has no script.
    let html = get(lb.addr, "/lb").await.expect("GET /lb").body;
    let html = String::from_utf8(html.to_vec()).expect("utf-8 page");
    let probe = chromium.dir.join("lb-width-probe.html");
    std::fs::write(&probe, width_probe(&html)).expect("write the probe page");
    let out = chromium
        .run(&[
            "--window-size=1600,900",
            "--hide-scrollbars",
            "--dump-dom",
            &format!("file://{}", probe.display()),
        ])
        .await;
    let dom = String::from_utf8_lossy(&out.stdout);
    for width in PROBE_WIDTHS {
        let report = dom
            .split_once(&format!(r#"<pre id="width-{width}">"#))
            .and_then(|(_, rest)| rest.split_once("</pre>"))
            .map(|(report, _)| report.replace("&quot;", "\""))
            .unwrap_or_else(|| panic!("no probe report for {width} px:\n{dom}"));
        assert!(
            report.starts_with(&format!("fits viewport={width} ")),
            "at {width} px the page is wider than the window: {report}"
        );
        let stacked = width <= 1100;
        assert!(
            report.contains(&format!("stacked={stacked}")),
            "at {width} px the backends should be {}: {report}",
            if stacked { "cards" } else { "a table" }
        );
    }

    for (w, h) in [(360, 780), (1920, 1080)] {
        let png = chromium.dir.join(format!("lb-{w}x{h}.png"));
        chromium
            .run(&[
                &format!("--window-size={w},{h}"),
                "--hide-scrollbars",
                "--disable-javascript",
                &format!("--screenshot={}", png.display()),
                &url,
            ])
            .await;
        check_png(&png, w, h);
        println!("screenshot: {}", png.display());
    }

    slow.abort();
    drop(connected);
    lb.stop().await.expect("balancer stops cleanly");
}

/// The `<tr ...>...</tr>` of the backend at `addr`.
fn backend_row<'a>(dom: &'a str, addr: &str) -> Option<&'a str> {
    let at = dom.find(&format!(r#"<tr data-backend="{addr}""#))?;
    let start = dom[..at].rfind("<tr")?;
    let end = at + dom[at..].find("</tr>")?;
    Some(&dom[start..end])
}

/// Widths the probe lays the page out at: small and common phones, a
/// tablet, a small laptop, a laptop, a desktop.
const PROBE_WIDTHS: [u32; 6] = [360, 390, 768, 1024, 1440, 1920];

/// A page holding `page` in one iframe per [`PROBE_WIDTHS`] entry (srcdoc,
/// so same-origin and measurable); each reports in a `<pre id="width-N">`:
/// `fits|OVERFLOWS viewport=N scrollWidth=N stacked=bool widest=[...]`.
fn width_probe(page: &str) -> String {
    let escaped = page.replace('&', "&amp;").replace('"', "&quot;");
    let frames: String = PROBE_WIDTHS
        .iter()
        .map(|w| {
            format!(
                r#"<iframe data-width="{w}" style="display:block;border:0;width:{w}px;height:6000px" onload="probe(this)" srcdoc="{escaped}"></iframe>"#
            )
        })
        .collect();
    format!(
        r#"<!doctype html><html><body><script>
function probe(f) {{
  const d = f.contentDocument, root = d.documentElement, vw = root.clientWidth;
  const wide = [...d.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > vw + 0.5).slice(0, 8)
    .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') +
      ' right=' + Math.round(e.getBoundingClientRect().right));
  const head = d.querySelector('#backends thead');
  const pre = document.createElement('pre');
  pre.id = 'width-' + f.dataset.width;
  pre.textContent = (root.scrollWidth <= vw ? 'fits' : 'OVERFLOWS') + ' viewport=' + vw +
    ' scrollWidth=' + root.scrollWidth + ' stacked=' + (!!head && head.getClientRects().length === 0) +
    ' widest=' + JSON.stringify(wide);
  document.body.append(pre);
}}
</script>{frames}</body></html>"#
    )
}

/// A PNG of `w` x `h` pixels (from its IHDR chunk) with real content in it.
fn check_png(path: &Path, w: u32, h: u32) {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("Chromium wrote no screenshot at {}: {e}", path.display()));
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    assert_eq!(
        (be(16), be(20)),
        (w, h),
        "{}: screenshot size",
        path.display()
    );
    // A blank or half-rendered page compresses to a few KB.
    assert!(
        bytes.len() > 20_000,
        "{}: only {} bytes, the page looks empty",
        path.display(),
        bytes.len()
    );
}

/// Headless Chromium with a fresh profile per run, bounded in time, and
/// every process it started killed afterwards.
struct Chromium {
    bin: PathBuf,
    /// Screenshots and the width probe page; kept for a look after the run.
    dir: PathBuf,
}

impl Chromium {
    fn find() -> Option<Chromium> {
        let bin = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        if !bin.is_file() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} not found: CI must provide Debian's chromium (.ci/run installs it)",
                bin.display()
            );
            eprintln!(
                "SKIPPED lb_page_in_headless_chromium: {} not found (apt-get install chromium, or set CHROMIUM)",
                bin.display()
            );
            return None;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Kept as the test's artefacts (CI keeps target/).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("lb-page")
            .join(format!("{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        println!("lb page artefacts in {}", dir.display());
        Some(Chromium { bin, dir })
    }

    /// Runs Chromium with `args` after the common headless flags; panics
    /// with its stderr when it fails or overruns [`CHROMIUM_LIMIT`].
    async fn run(&self, args: &[&str]) -> Output {
        let profile = tempfile_dir(&self.dir, "profile");
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so the renderer and zygote can be killed
        // along with the browser; kill_on_drop covers a panic in between.
        .process_group(0)
        .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        let group = child.id();
        let result = tokio::time::timeout(CHROMIUM_LIMIT, child.wait_with_output()).await;
        if let Some(pgid) = group {
            kill_group(pgid);
        }
        let _ = std::fs::remove_dir_all(&profile);
        let out = match result {
            Err(_) => panic!("chromium {args:?} did not finish within {CHROMIUM_LIMIT:?}; killed"),
            Ok(Err(e)) => panic!("chromium {args:?}: {e}"),
            Ok(Ok(out)) => out,
        };
        assert!(
            out.status.success(),
            "chromium {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// SIGKILL to the process group Chromium led; nothing if it is gone already.
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A new, empty directory under `parent`.
fn tempfile_dir(parent: &Path, prefix: &str) -> PathBuf {
    for i in 0..1000 {
        let dir = parent.join(format!("{prefix}-{i}"));
        if std::fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    panic!("cannot create a directory in {}", parent.display())
}
