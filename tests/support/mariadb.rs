//! A real MariaDB for tests: Debian's `mariadb-server`, initialised into a
//! temporary data directory and started on 127.0.0.1:<free port> as a child
//! of the test, killed and removed on drop.
//!
//! The server gets a user `hashgate` with a test-only placeholder password
//! (reachable over TCP from anywhere on loopback); root stays socket-only.
//! [`MariaDb::stop`] and [`MariaDb::restart`] take the server down and back
//! up on the same port and data, for "database went away" tests.
//!
//! When MariaDB is not installed, [`MariaDb::start`] returns `None` and the
//! test skips with a notice, except under `CI`, where it fails: CI installs
//! the `mariadb-server` package (which brings `mariadb-client`).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test user's password: a placeholder, never a real secret.
pub const PASSWORD: &str = "test-only-placeholder-pw";
pub const USER: &str = "hashgate";

pub struct MariaDb {
    pub port: u16,
    dir: PathBuf,
    server: PathBuf,
    child: Option<Child>,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .flat_map(|n| {
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .into_iter()
                .map(move |d| Path::new(d).join(n))
        })
        .find(|p| p.exists())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl MariaDb {
    /// Initialises and starts a server, or `None` (skip) when MariaDB is not
    /// installed and `CI` is unset.
    pub fn start() -> Option<MariaDb> {
        let server = find(&["mariadbd", "mysqld"]);
        let install = find(&["mariadb-install-db", "mysql_install_db"]);
        let client = find(&["mariadb", "mysql"]);
        let (Some(server), Some(install), Some(_)) = (server, install, client) else {
            let msg = "MariaDB is not installed (Debian package `mariadb-server`): \
                       the MySQL tests need a real server";
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hashgate-mariadb-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Each server gets its own tmpdir: bootstraps running side by side
        // in one shared /tmp were seen to fail on each other's temp tables
        // ("Error on delete of '/tmp/#sql-temptable-...'").
        std::fs::create_dir_all(dir.join("tmp")).expect("create the MariaDB directory");
        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ]);
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = MariaDb {
            port: crate::support::free_port(),
            dir,
            server,
            child: None,
        };
        db.launch();
        db.sql(&format!(
            "CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON *.* TO '{USER}'@'%'; FLUSH PRIVILEGES;"
        ));
        Some(db)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(&self.server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
                "--max-connections=500",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("start mariadbd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("mariadbd exited ({status}): {}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not listen within 60 s: {}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the socket with the `mariadb` client.
    pub fn sql(&self, sql: &str) -> String {
        let client = find(&["mariadb", "mysql"]).expect("mariadb client");
        let out = Command::new(client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .expect("run the mariadb client");
        assert!(
            out.status.success(),
            "SQL failed: {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `mysql://hashgate:<placeholder>@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Stops the server (SIGTERM, as a clean shutdown would) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -TERM {}", child.id())])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
