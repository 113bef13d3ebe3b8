//! HAProxy (Debian package `haproxy`, 2.6 on Debian 12) as a reverse proxy
//! in front of one backend, on 127.0.0.1:<free port>: the reference the
//! strict-head rules are compared with. Killed on drop.
//!
//! When `haproxy` is not installed, [`Haproxy::start`] returns `None` and
//! the test skips with a notice, except under `CI`, where it fails: CI
//! installs the package.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    /// HAProxy in HTTP mode in front of `backend`, default timeouts of a
    /// few seconds, no health checks.
    pub fn start(backend: SocketAddr) -> Option<Haproxy> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(bin) = bin else {
            let msg = "haproxy is not installed (Debian package `haproxy`): \
                       the strict-head rules are compared with it";
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let port = crate::support::free_port();
        let dir =
            std::env::temp_dir().join(format!("hashgate-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 200\n\
                 defaults\n    mode http\n    option http-keep-alive\n    timeout connect 2s\n    \
                 timeout client 5s\n    timeout server 5s\n    timeout http-request 5s\n\
                 frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\
                 backend be\n    server b {backend}\n"
            ),
        )
        .expect("haproxy config");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Haproxy { addr, child, dir })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
