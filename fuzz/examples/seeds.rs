//! Writes the seed corpus, `fuzz/corpus/<target>/<name>`, from the shapes
//! below (the classic smuggling and desync shapes of
//! `tests/framing_property.rs`, chunked bodies, `X-Forwarded-For` lists,
//! configuration values), through each target's own `encode` so a seed
//! decodes to what its name says:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! Existing files of the same name are overwritten; others are left alone.

use std::net::IpAddr;
use std::path::Path;

use hashgate::proxy::h1::head::Framing;
use hashgate_fuzz::{chunked, client_ip, config, request_head, response_head};

const REQUESTS: &[(&str, &[u8])] = &[
    ("get", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("post-length", b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"),
    ("hop-by-hop", b"GET /a?b=1 HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: secret\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nAccept: */*\r\n\r\nGET /next"),
    ("connection-names-length", b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 91\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n"),
    ("connection-names-length-and-ip", b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Content-Length, X-Real-IP\r\nContent-Length: 5\r\nX-Real-IP: 6.6.6.6\r\n\r\nhello"),
    ("connection-close-length", b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: close, content-length\r\nContent-Length: 5\r\n\r\nhello"),
    ("connection-names-te", b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("connection-names-host", b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n"),
    ("connection-names-forwarding", b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: x-forwarded-for, forwarded\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n"),
    ("cl-te", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
    ("te-cl", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("te-xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n5c\r\n"),
    ("te-space-before-colon", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n5c\r\n"),
    ("te-twice", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n5c\r\n"),
    ("te-tab", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding:\tchunked\r\n\r\n5c\r\n"),
    ("te-folded", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n Transfer-Encoding: chunked\r\n\r\n5c\r\n"),
    ("te-after-bare-lf", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nX: X\nTransfer-Encoding: chunked\r\n\r\n5c\r\n"),
    ("te-name-lf", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding\n: chunked\r\n\r\n5c\r\n"),
    ("te-identity-chunked", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: identity, chunked\r\n\r\n5c\r\n"),
    ("te-chunked-identity", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n\r\n5c\r\n"),
    ("cl-cl-differ", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("cl-cl-same", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
    ("cl-list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello"),
    ("cl-plus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"),
    ("cl-minus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nhello"),
    ("cl-hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello"),
    ("cl-two-numbers", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello"),
    ("cl-huge", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\nhello"),
    ("cl-no-space", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:5\r\n\r\nhello"),
    ("cl-space-before-colon", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello"),
    ("cl-leading-zeros", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n\r\nhello"),
    ("cl-zero", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
    ("cl-pipelined", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /pipelined HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("forwarding-spoofed", b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Host: evil\r\n\r\n"),
    ("host-twice", b"GET / HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n"),
    ("bare-lf", b"GET / HTTP/1.1\nHost: h\n\n"),
    ("absolute-form", b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("http10", b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"),
    ("expect", b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
    ("upgrade", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"),
    ("pipelined", b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("own-page", b"GET /lb/status?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("no-host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
    ("partial", b"GET / HTTP/1.1\r\nHost: h\r\n"),
    ("many-named", b"DELETE /r HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h\r\nA: 1\r\nH: 8\r\nZ: 26\r\n\r\n"),
    ("too-many-named", b"PUT /r HTTP/1.1\r\nHost: h\r\nConnection: a, b, c, d, e, f, g, h, i\r\n\r\n"),
    ("obs-text-value", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9\r\n\r\n"),
    ("empty-values", b"OPTIONS * HTTP/1.1\r\nHost:\r\nX-Empty: \r\nConnection: ,,\r\n\r\n"),
];

const RESPONSES: &[(&str, &[u8])] = &[
    ("length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("connection-names-length", b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"),
    ("connection-names-te", b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("connection-names-hop", b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Content-Length, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello"),
    ("chunked-trailer", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
    ("te-cl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("gzip-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("chunked-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello"),
    ("until-close", b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nhello until close"),
    ("204-length", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    ("304-length", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
    ("100-then-200", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("103-link", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("cl-cl-same", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
    ("cl-cl-differ", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("cl-leading-zeros", b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello"),
    ("http10-keep-alive", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"),
    ("http10-until-close", b"HTTP/1.0 200 OK\r\n\r\nhello"),
    ("connection-close", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
    ("hop-by-hop", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\n\r\nhello"),
    ("glued", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nglued!"),
    ("chunked-bare-lf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"),
    ("chunked-ext-blank", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a=\"b\"\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"),
    ("te-empty", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nContent-Length: 3\r\n\r\n"),
    ("te-then-empty", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n"),
    ("101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
    ("status-out-of-range", b"HTTP/1.1 010 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status-999", b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n"),
    ("no-reason", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"),
    ("obs-text-reason", b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 0\r\n\r\n"),
    ("ssh", b"SSH-2.0-OpenSSH\r\n\r\n"),
    ("partial", b"HTTP/1.1 200 OK\r\nContent-Len"),
];

const CHUNKED: &[(&str, &[u8])] = &[
    ("simple", b"5\r\nhello\r\n0\r\n\r\n"),
    (
        "ext-and-trailer",
        b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\n",
    ),
    ("empty-then-next", b"0\r\n\r\nGET / HTTP/1.1\r\n"),
    ("bare-lf", b"3\nabc\n0\n\n"),
    ("ext-blanks", b"5 ; a=\"b c\"\r\nhello\r\n0\r\n\r\n"),
    ("upper-hex", b"A\r\n0123456789\r\n0000\r\n\r\n"),
    ("size-overflow", b"ffffffffffffffffff\r\n"),
    ("size-15-digits", b"fffffffffffffff\r\nabc"),
    ("bare-cr", b"5\rext\r\nhello\r\n"),
    ("junk-after-size", b"5x\r\n"),
    ("blank-before-crlf", b"0 \r\n\r\n"),
    ("control-in-ext", b"5;a\x01\r\n"),
    ("trailer-no-colon", b"0\r\nX-Sum 1\r\n\r\n"),
    ("trailer-folded", b"0\r\n Folded: 1\r\n\r\n"),
    ("trailer-bare-cr", b"0\r\nX: a\rb\r\n\r\n"),
    ("cr-cr-lf", b"0\r\r\n"),
    ("data-without-crlf", b"5\r\nhelloXX"),
    (
        "smuggled-response",
        b"4\r\nabcd\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    ("obs-text-ext", b"1;n=\xe9\r\nx\r\n0\r\nT: \xe9\r\n\r\n"),
    (
        "many-chunks",
        b"1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n4\r\ndddd\r\n0\r\nA: 1\r\nB: 2\r\n\r\n",
    ),
];

const XFF: &[(&str, &str, &str, &[&str])] = &[
    ("untrusted-peer", "203.0.113.9", "10.0.0.0/8", &["1.2.3.4"]),
    ("nothing-trusted", "10.0.0.1", "", &["1.2.3.4"]),
    (
        "rightmost-untrusted",
        "10.0.0.2",
        "10.0.0.0/8",
        &["6.6.6.6, 198.51.100.7", "10.1.1.1"],
    ),
    (
        "v6-brackets-port",
        "::1",
        "10.0.0.0/8, ::1/128",
        &["2001:db8::5, [2001:db8::9]:443"],
    ),
    ("v4-port", "10.0.0.2", "10.0.0.0/8", &["198.51.100.7:5555"]),
    ("no-header", "10.0.0.2", "10.0.0.0/8", &[]),
    (
        "garbage-ends-walk",
        "10.0.0.2",
        "10.0.0.0/8",
        &["1.2.3.4, garbage, 10.1.1.1"],
    ),
    (
        "garbage-last",
        "10.0.0.2",
        "10.0.0.0/8",
        &["1.2.3.4, garbage"],
    ),
    (
        "garbage-first",
        "10.0.0.2",
        "10.0.0.0/8",
        &["garbage, 1.2.3.4"],
    ),
    (
        "all-trusted",
        "10.0.0.2",
        "10.0.0.0/8, 192.168.0.0/16",
        &["192.168.1.20, 10.9.9.9"],
    ),
    (
        "mapped-peer",
        "::ffff:127.0.0.1",
        "127.0.0.0/8",
        &["192.0.2.1"],
    ),
    (
        "mapped-hop",
        "127.0.0.1",
        "127.0.0.1, 10.0.0.0/8",
        &["::ffff:10.0.0.3, ::ffff:192.0.2.8"],
    ),
    (
        "bare-address-trusted",
        "192.0.2.10",
        "192.0.2.10",
        &["198.51.100.1,192.0.2.10"],
    ),
    (
        "obs-text-line",
        "10.0.0.2",
        "10.0.0.0/8",
        &["1.2.3.4, caf\u{e9}", "10.0.0.5"],
    ),
    (
        "empty-elements",
        "10.0.0.2",
        "10.0.0.0/8",
        &[" , 1.2.3.4,,", ""],
    ),
    (
        "v4-in-brackets",
        "10.0.0.2",
        "10.0.0.0/8",
        &["[198.51.100.2]"],
    ),
    (
        "v6-bracket-junk",
        "10.0.0.2",
        "10.0.0.0/8",
        &["[2001:db8::1]junk"],
    ),
    (
        "v6-port-no-brackets",
        "10.0.0.2",
        "10.0.0.0/8",
        &["2001:db8::1:80"],
    ),
    (
        "zone-and-tab",
        "fe80::1",
        "fe80::/10",
        &["\t192.0.2.3\t", "fe80::2"],
    ),
    (
        "host-bits-cidr",
        "10.0.0.2",
        "10.0.0.1/8, 0.0.0.0/0",
        &["1.1.1.1, 2.2.2.2"],
    ),
];

const CONFIGS: &[(&str, &[(&str, &str)])] = &[
    ("defaults", &[]),
    (
        "documented-defaults",
        &[
            ("BALANCER_HOST", "0.0.0.0"),
            ("BALANCER_PORT", "13003"),
            ("BACKEND_PORT", "13004"),
            ("DNS_REFRESH_SECS", "60"),
            ("BACKEND_HOST", "127.0.0.1"),
            ("BACKEND_START_PORT", "13004"),
            ("BACKEND_COUNT", "5"),
            ("HEALTH_INTERVAL_SECS", "30"),
            ("HEALTH_PATH", "/health"),
            ("HEALTH_TIMEOUT_MS", "2000"),
            ("HEALTH_RISE", "2"),
            ("HEALTH_FALL", "2"),
            ("MAX_HEADER_BYTES", "65536"),
            ("CLIENT_IDLE_TIMEOUT_SECS", "60"),
            ("CONNECT_TIMEOUT_MS", "2000"),
            ("UPSTREAM_TIMEOUT_SECS", "60"),
            ("POOL_MAX_IDLE", "256"),
            ("POOL_IDLE_TIMEOUT_SECS", "30"),
            ("SHUTDOWN_GRACE_SECS", "30"),
            ("WORKER_THREADS", "0"),
            ("API_HOST", "0.0.0.0"),
            ("PORT", "13004"),
            ("WORKER_TIMEOUT_SECS", "60"),
            ("WORKER_SWEEP_SECS", "5"),
            ("HEARTBEAT_INTERVAL_SECS", "30"),
            ("API_MAX_BODY_BYTES", "65536"),
            ("MYSQL_PORT", "13306"),
            ("MYSQL_USER", "root"),
            ("MYSQL_DATABASE", "kiro_api"),
            ("SQLITE_PATH", "data/hashgate.db"),
            ("DB_MAX_CONNECTIONS", "10"),
            ("DB_ACQUIRE_TIMEOUT_MS", "2000"),
            ("DB_QUERY_TIMEOUT_MS", "5000"),
            ("INSTANCE_COUNT", "5"),
            ("START_PORT", "13004"),
        ],
    ),
    (
        "static-hosts",
        &[
            (
                "BACKEND_HOSTS",
                "api-1:13004, 10.0.0.2:13005=3,[2001:db8::1]:80=0",
            ),
            ("DNS_REFRESH_SECS", "5"),
            ("DNS_SERVER", "127.0.0.1:5353"),
        ],
    ),
    (
        "static-hosts-bad",
        &[(
            "BACKEND_HOSTS",
            "10.0.0.1:13004=x, :80, h:0, h:65536, a b:1",
        )],
    ),
    ("static-hosts-empty", &[("BACKEND_HOSTS", " , ,")]),
    (
        "dns",
        &[
            ("BACKEND_DNS", "tasks.api"),
            ("BACKEND_PORT", "8080"),
            ("DNS_SERVER", "[::1]:53"),
        ],
    ),
    (
        "dns-bad",
        &[("BACKEND_DNS", "http://api"), ("DNS_SERVER", "localhost")],
    ),
    (
        "port-range-edge",
        &[("BACKEND_START_PORT", "65535"), ("BACKEND_COUNT", "1")],
    ),
    (
        "port-range-past",
        &[("BACKEND_START_PORT", "65000"), ("BACKEND_COUNT", "1000")],
    ),
    (
        "numbers-odd",
        &[
            ("BALANCER_PORT", "+80"),
            ("HEALTH_RISE", "0"),
            ("HEALTH_FALL", "101"),
            ("MAX_HEADER_BYTES", "8191"),
            ("HEALTH_INTERVAL_SECS", "-3"),
        ],
    ),
    (
        "numbers-huge",
        &[
            ("HEALTH_TIMEOUT_MS", "18446744073709551616"),
            ("POOL_MAX_IDLE", "100001"),
            ("WORKER_THREADS", "1025"),
            ("SHUTDOWN_GRACE_SECS", "86401"),
        ],
    ),
    (
        "blanks",
        &[
            ("BALANCER_PORT", "  8080 "),
            ("HEALTH_PATH", "  "),
            ("BALANCER_HOST", "\t::1"),
        ],
    ),
    ("health-path", &[("HEALTH_PATH", "/healthz?full=1")]),
    ("health-path-bad", &[("HEALTH_PATH", "/he alth")]),
    (
        "trusted",
        &[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1 ,::1,fe80::/10")],
    ),
    ("trusted-bad", &[("TRUSTED_PROXIES", "10.0.0.0/33")]),
    (
        "api",
        &[
            ("PORT", "13005"),
            ("INSTANCE_ID", "api-1"),
            ("HOSTNAME", "box"),
            ("API_MAX_BODY_BYTES", "1024"),
        ],
    ),
    (
        "api-bad",
        &[
            ("INSTANCE_ID", "has space"),
            ("API_MAX_BODY_BYTES", "16777217"),
            ("PORT", "0"),
        ],
    ),
    ("hostname-odd", &[("HOSTNAME", "h\u{e9}")]),
    (
        "mysql-parts",
        &[
            ("MYSQL_HOST", "db.internal"),
            ("MYSQL_PASSWORD", "placeholder-pw"),
            ("MYSQL_DATABASE", "kiro_api"),
            ("MYSQL_PORT", "3306"),
        ],
    ),
    (
        "mysql-database-bad",
        &[
            ("MYSQL_HOST", "db"),
            ("MYSQL_DATABASE", "kiro-api;drop"),
            ("MYSQL_PASSWORD", "placeholder-pw"),
        ],
    ),
    (
        "url-mysql",
        &[(
            "DATABASE_URL",
            "mysql://root:placeholder-pw@127.0.0.1:3306/kiro_api",
        )],
    ),
    (
        "url-mariadb",
        &[(
            "DATABASE_URL",
            "mariadb://u:placeholder-pw@h:3307/app?ssl-mode=disabled",
        )],
    ),
    (
        "url-bad-port",
        &[("DATABASE_URL", "mysql://u:placeholder-pw@h:notaport/db")],
    ),
    (
        "url-no-database",
        &[("DATABASE_URL", "mysql://u:placeholder-pw@h:3306")],
    ),
    (
        "url-postgres",
        &[("DATABASE_URL", "postgres://u:placeholder-pw@h/db")],
    ),
    (
        "url-slash-in-password",
        &[("DATABASE_URL", "mysql://u:s3cr/et-pw@h:3306/db")],
    ),
    (
        "url-sqlite",
        &[("DATABASE_URL", "sqlite:data/x.db?mode=rwc")],
    ),
    ("url-sqlite-memory", &[("DATABASE_URL", "sqlite::memory:")]),
    (
        "db-pool",
        &[
            ("DB_MAX_CONNECTIONS", "0"),
            ("DB_ACQUIRE_TIMEOUT_MS", "soon"),
            ("DB_QUERY_TIMEOUT_MS", "3600001"),
        ],
    ),
    (
        "cluster",
        &[
            ("INSTANCE_COUNT", "10"),
            ("START_PORT", "20000"),
            ("BALANCER_PORT", "19999"),
            ("HEALTH_INTERVAL_SECS", "2"),
        ],
    ),
    (
        "cluster-past",
        &[("INSTANCE_COUNT", "100"), ("START_PORT", "65500")],
    ),
    (
        "cluster-trusted",
        &[("TRUSTED_PROXIES", "192.0.2.0/24,2001:db8::/32")],
    ),
];

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), data).expect("seed written");
}

fn main() {
    let clients: [IpAddr; 5] = [
        "192.0.2.7".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
        "::ffff:198.51.100.9".parse().unwrap(),
        "0.0.0.0".parse().unwrap(),
        "255.255.255.255".parse().unwrap(),
    ];
    for (i, (name, buf)) in REQUESTS.iter().enumerate() {
        let client = clients[i % clients.len()];
        write("request_head", name, &request_head::encode(client, 0, buf));
    }
    // Bodies over small limits.
    let post = REQUESTS[1].1;
    for (limit, name) in [(1, "limit-0"), (3, "limit-5"), (2, "limit-1")] {
        write(
            "request_head",
            name,
            &request_head::encode(clients[0], limit, post),
        );
    }

    // At hashgate's limit of 100 lines: the rewrite adds lines past it.
    let mut many = b"GET /many HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 1..100 {
        many.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    write(
        "request_head",
        "100-lines",
        &request_head::encode(clients[1], 0, &many),
    );
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\nuntil close");
    write(
        "response_head",
        "100-lines-until-close",
        &response_head::encode(false, false, &many),
    );

    for (i, (name, buf)) in RESPONSES.iter().enumerate() {
        write(
            "response_head",
            name,
            &response_head::encode(false, i % 3 == 2, buf),
        );
    }
    for (name, buf) in [
        ("head-length", RESPONSES[0].1),
        ("head-chunked-gzip", RESPONSES[7].1),
    ] {
        write(
            "response_head",
            name,
            &response_head::encode(true, false, buf),
        );
    }

    for (i, (name, body)) in CHUNKED.iter().enumerate() {
        // Whole, and split in a few ways.
        let pieces: &[u8] = match i % 4 {
            0 => &[],
            1 => &[1],
            2 => &[3, 0, 7],
            _ => &[2, 5],
        };
        write(
            "chunked",
            name,
            &chunked::encode(Framing::Chunked, pieces, body),
        );
    }
    let hello = b"hello, world";
    write(
        "chunked",
        "length",
        &chunked::encode(Framing::Length(5), &[2, 2], hello),
    );
    write(
        "chunked",
        "length-zero",
        &chunked::encode(Framing::Length(0), &[], hello),
    );
    write(
        "chunked",
        "empty",
        &chunked::encode(Framing::Empty, &[4], hello),
    );
    write(
        "chunked",
        "until-close",
        &chunked::encode(Framing::UntilClose, &[0, 5], hello),
    );

    for (name, peer, trusted, values) in XFF {
        write("client_ip", name, &client_ip::encode(peer, trusted, values));
    }

    for (name, pairs) in CONFIGS {
        write("config", name, &config::encode(pairs));
    }
}
