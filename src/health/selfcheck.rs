//! A container health probe built into the binaries.
//!
//! The runtime image is `FROM scratch`: no shell, no curl, no wget. Docker,
//! Compose, Swarm and Kubernetes `exec` probes therefore run the binary itself
//! (`/balancer healthcheck`, `/api healthcheck`), which calls
//! [`main_for_port`]. It is deliberately plain blocking `std::net`: a probe
//! runs every few seconds, must exit within its timeout, and has no reason to
//! start an async runtime or read the whole configuration.
//!
//! Exit status follows Docker's `HEALTHCHECK` contract: 0 healthy, 1 unhealthy.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The whole probe must finish inside this; Compose's `timeout` is set higher.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} sent no valid HTTP status line")]
    BadResponse { addr: SocketAddr },
}

/// Probes `GET /health` on `127.0.0.1:port`, prints one line saying what it
/// saw, and returns the exit status for the process: success only on 200.
///
/// Binaries call this when their first argument is `healthcheck`, with the
/// port they listen on (read from their own port variable, or its default).
pub fn main_for_port(port: u16) -> ExitCode {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match probe(addr, "/health", TIMEOUT) {
        Ok(200) => {
            println!("healthy: GET http://{addr}/health -> 200");
            ExitCode::SUCCESS
        }
        Ok(code) => {
            eprintln!("unhealthy: GET http://{addr}/health -> {code}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One blocking `GET path` over HTTP/1.1 with `Connection: close`, returning
/// the status code. Only the status line is read: the body does not matter to
/// a probe, and not reading it keeps a misbehaving server from stalling us.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let io = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ProbeError::Timeout { addr, timeout }
        } else {
            ProbeError::Io { addr, source }
        }
    };
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ProbeError::Timeout { addr, timeout })
    };
    stream.set_write_timeout(Some(remaining()?)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hashgate-healthcheck\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;

    // Read until the end of the status line; 512 bytes is plenty for it.
    let mut buf = [0u8; 512];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        stream.set_read_timeout(Some(remaining()?)).map_err(io)?;
        match stream.read(&mut buf[len..]).map_err(io)? {
            0 => break,
            n => len += n,
        }
    }
    parse_status_line(&buf[..len]).ok_or(ProbeError::BadResponse { addr })
}

/// Like [`probe`], but reads the whole answer (up to 64 KiB, until the
/// server closes): the status and the body as text. For the cluster
/// launcher, which reads a worker's `/health`.
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let io = |source: std::io::Error| ProbeError::Io { addr, source };
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hashgate-healthcheck\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while all.len() < 64 * 1024 {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ProbeError::Timeout { addr, timeout })?;
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ProbeError::Timeout { addr, timeout });
            }
            Err(e) => return Err(io(e)),
        }
    }
    let status = parse_status_line(&all).ok_or(ProbeError::BadResponse { addr })?;
    let text = String::from_utf8_lossy(&all).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// `HTTP/1.x NNN ...` -> `NNN`.
fn parse_status_line(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-shot server that reads the request and answers `reply`.
    fn serve_once(reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(reply);
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, handle)
    }

    #[test]
    fn ok_on_200_and_sends_a_proper_request() {
        let (addr, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(probe(addr, "/health", TIMEOUT).expect("probe"), 200);
        let req = h.join().expect("server");
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Connection: close\r\n"), "{req}");
    }

    #[test]
    fn reports_503() {
        let (addr, _h) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(probe(addr, "/health", TIMEOUT).expect("probe"), 503);
    }

    #[test]
    fn garbage_is_a_bad_response() {
        let (addr, _h) = serve_once(b"SSH-2.0-OpenSSH\r\n");
        assert!(matches!(
            probe(addr, "/health", TIMEOUT),
            Err(ProbeError::BadResponse { .. })
        ));
    }

    #[test]
    fn closed_port_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(matches!(
            probe(addr, "/health", TIMEOUT),
            Err(ProbeError::Connect { .. })
        ));
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let start = Instant::now();
        let r = probe(addr, "/health", Duration::from_millis(200));
        assert!(matches!(r, Err(ProbeError::Timeout { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line(b"HTTP/1.0 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 200\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 999 x\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
