//! End-to-end tests against a real authoritative server: Knot DNS (`knotd`) started on
//! loopback with a throwaway configuration, zone `example.test.` and TSIG keys allowed (or,
//! for one key, not allowed) to update it.
//!
//! These need Debian's `knot` package, so `.ci/run` (through `scripts/setup.sh`) must
//! install it (`apt-get install -y knot`). Without `knotd` the tests print SKIP and pass,
//! except under `CI=true`, where a missing server would silently drop the coverage and so
//! fails the run instead.

use std::fs;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use understudy_dnsupdate::{
    query_address, query_address_with_timeout, replace_address, AddressType, DnsError, Tsig,
    TsigAlgorithm,
};

/// The keys the server knows. The secrets are test-only constants.
const SHA256_KEY: &str = "update-key";
const SHA256_SECRET: &str = "3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGho=";
const SHA512_KEY: &str = "update-key-512";
const SHA512_SECRET: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
/// Known to the server and allowed to transfer the zone, but not to update it. (knotd only
/// knows keys that some ACL names: a key in no ACL gets BADKEY, not a refusal.)
const OUTSIDER_KEY: &str = "outsider-key";
const OUTSIDER_SECRET: &str = "b3V0c2lkZXItc2VjcmV0LW91dHNpZGVyLXNlY3JldCE=";

const ZONE: &str = "example.test.";
const WWW: &str = "www.example.test.";
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long knotd gets to start answering before the test gives up.
const STARTUP_LIMIT: Duration = Duration::from_secs(15);

/// A running knotd, killed (and reaped) on drop whatever the test's outcome.
struct Knot {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Knot {
    /// Starts knotd, or returns None (after printing SKIP) when it is not installed outside CI.
    async fn start(test: &str) -> Option<Knot> {
        let Some(knotd) = find_knotd() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("knotd is not installed; .ci/run must `apt-get install -y knot`");
            }
            println!("SKIP {test}: knotd not found (apt-get install knot)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        write_config(dir.path(), port);
        // knotd creates no missing storage directory, and without one its journal (where the
        // updates go) cannot be opened.
        fs::create_dir(dir.path().join("db")).expect("db dir");

        // stderr goes to a file rather than a pipe: nothing drains a pipe while the test
        // runs, and a full pipe would stall the server.
        let log = fs::File::create(dir.path().join("knotd.log")).expect("log file");
        let child = Command::new(knotd)
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn knotd");
        let mut knot = Knot { child, dir, addr };
        knot.wait_until_serving().await;
        Some(knot)
    }

    /// Polls until the zone answers (the `ns` record of the zone file is there), with a bounded
    /// wait; a server that died or never answers fails the test with its log.
    async fn wait_until_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("knotd exited during startup ({status}):\n{}", self.log());
            }
            let ns = query_address_with_timeout(
                self.addr,
                "ns.example.test.",
                AddressType::A,
                Duration::from_millis(300),
            )
            .await;
            if matches!(ns, Ok(ref addresses) if !addresses.is_empty()) {
                return;
            }
            if started.elapsed() > STARTUP_LIMIT {
                panic!(
                    "knotd did not serve {ZONE} within {STARTUP_LIMIT:?} (last: {ns:?}):\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.dir.path().join("knotd.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// A key read from a 0600 secret file, through the same path the daemon uses.
    fn key(&self, name: &str, algorithm: TsigAlgorithm, secret: &str) -> Tsig {
        let path = self
            .dir
            .path()
            .join(format!("{name}-{}.secret", algorithm.name()));
        fs::write(&path, format!("{secret}\n")).expect("write secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        Tsig::from_secret_file(name, algorithm, &path).expect("load secret")
    }
}

fn find_knotd() -> Option<PathBuf> {
    // Debian puts daemons in sbin, which a non-root PATH often lacks.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("knotd"))
        .find(|candidate| candidate.is_file())
}

/// A loopback port free for both UDP and TCP right now. Another process could take it before
/// knotd binds it, but then knotd fails to start and the test says so; it cannot pass wrongly.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn write_config(dir: &Path, port: u16) {
    let d = dir.display();
    // One worker of each kind keeps the server small; everything it writes (journal, timers,
    // control socket) stays inside the temp dir, and the zone file is never rewritten so the
    // journal is the only record of the updates.
    let config = format!(
        r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

control:
    listen: "{d}/knot.sock"

database:
    storage: "{d}/db"

log:
  - target: stderr
    any: info

key:
  - id: {SHA256_KEY}
    algorithm: hmac-sha256
    secret: {SHA256_SECRET}
  - id: {SHA512_KEY}
    algorithm: hmac-sha512
    secret: {SHA512_SECRET}
  - id: {OUTSIDER_KEY}
    algorithm: hmac-sha256
    secret: {OUTSIDER_SECRET}

acl:
  - id: allow-update
    key: [{SHA256_KEY}, {SHA512_KEY}]
    action: update
  - id: allow-transfer
    key: {OUTSIDER_KEY}
    action: transfer

zone:
  - domain: {ZONE}
    storage: "{d}"
    file: "example.test.zone"
    acl: [allow-update, allow-transfer]
    zonefile-sync: -1
"#
    );
    fs::write(dir.join("knot.conf"), config).expect("write config");

    // `big` has more A records than fit in a 1232-byte UDP answer, to force the TCP retry.
    let mut zone = String::from(
        "$ORIGIN example.test.\n\
         $TTL 300\n\
         @    IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300\n\
         @    IN NS  ns.example.test.\n\
         ns   IN A   127.0.0.1\n\
         www  IN A   192.0.2.1\n\
         www  IN A   192.0.2.2\n",
    );
    for i in 1..=120 {
        zone.push_str(&format!("big  IN A   198.51.100.{i}\n"));
    }
    fs::write(dir.join("example.test.zone"), zone).expect("write zone");
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address literal")
}

#[tokio::test]
async fn replaces_an_a_record() {
    let Some(knot) = Knot::start("replaces_an_a_record").await else {
        return;
    };
    let key = knot.key(SHA256_KEY, TsigAlgorithm::HmacSha256, SHA256_SECRET);
    // The zone file starts with two addresses: the replacement must leave exactly one.
    let before = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");
    assert_eq!(before.len(), 2, "{before:?}");

    replace_address(knot.addr, ZONE, WWW, 60, ip("10.1.2.3"), &key, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("first update: {e}\n{}", knot.log()));
    let addresses = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");
    assert_eq!(addresses, vec![ip("10.1.2.3")]);

    // Names without the trailing dot are accepted too.
    replace_address(
        knot.addr,
        "example.test",
        "www.example.test",
        60,
        ip("10.9.9.9"),
        &key,
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("second update: {e}\n{}", knot.log()));
    let addresses = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");
    assert_eq!(addresses, vec![ip("10.9.9.9")]);
}

#[tokio::test]
async fn replaces_an_aaaa_record_and_leaves_a_alone() {
    let Some(knot) = Knot::start("replaces_an_aaaa_record_and_leaves_a_alone").await else {
        return;
    };
    // The other key, so both algorithms meet a real server.
    let key = knot.key(SHA512_KEY, TsigAlgorithm::HmacSha512, SHA512_SECRET);
    let a_before = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");
    assert!(query_address(knot.addr, WWW, AddressType::Aaaa)
        .await
        .expect("query")
        .is_empty());

    replace_address(knot.addr, ZONE, WWW, 60, ip("2001:db8::1"), &key, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("first update: {e}\n{}", knot.log()));
    let addresses = query_address(knot.addr, WWW, AddressType::Aaaa)
        .await
        .expect("query");
    assert_eq!(addresses, vec![ip("2001:db8::1")]);

    replace_address(knot.addr, ZONE, WWW, 60, ip("2001:db8::99"), &key, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("second update: {e}\n{}", knot.log()));
    let addresses = query_address(knot.addr, WWW, AddressType::Aaaa)
        .await
        .expect("query");
    assert_eq!(addresses, vec![ip("2001:db8::99")]);

    let a_after = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");
    assert_eq!(
        a_before, a_after,
        "an AAAA update must not touch the A RRset"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_changes_nothing() {
    let Some(knot) = Knot::start("a_wrong_secret_is_refused_and_changes_nothing").await else {
        return;
    };
    let before = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");

    // Right key name, wrong secret: BADSIG.
    let wrong = knot.key(SHA256_KEY, TsigAlgorithm::HmacSha256, OUTSIDER_SECRET);
    let err = replace_address(knot.addr, ZONE, WWW, 60, ip("10.6.6.6"), &wrong, TIMEOUT)
        .await
        .expect_err("a wrong secret must be refused");
    let text = err.to_string();
    println!("wrong secret: {text}");
    assert!(matches!(err, DnsError::TsigRejected { .. }), "{text}");
    assert!(text.contains("BADSIG") && text.contains("secret"), "{text}");

    // A key name the server does not know: BADKEY.
    let unknown = knot.key("no-such-key", TsigAlgorithm::HmacSha256, SHA256_SECRET);
    let err = replace_address(knot.addr, ZONE, WWW, 60, ip("10.6.6.6"), &unknown, TIMEOUT)
        .await
        .expect_err("an unknown key must be refused");
    let text = err.to_string();
    println!("unknown key: {text}");
    assert!(
        text.contains("BADKEY") && text.contains("no-such-key"),
        "{text}"
    );

    // A valid key that the zone's ACL does not allow to update.
    let outsider = knot.key(OUTSIDER_KEY, TsigAlgorithm::HmacSha256, OUTSIDER_SECRET);
    let err = replace_address(knot.addr, ZONE, WWW, 60, ip("10.6.6.6"), &outsider, TIMEOUT)
        .await
        .expect_err("a key outside the ACL must be refused");
    let text = err.to_string();
    println!("outsider key: {text}");
    // knotd reports an ACL denial as BADKEY (other servers say REFUSED or NOTAUTH): either
    // way the message must point at the key's permission on the zone.
    assert!(
        matches!(
            err,
            DnsError::TsigRejected { .. } | DnsError::UpdateRejected { .. }
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{OUTSIDER_KEY} is not allowed to update zone {ZONE}"
        )),
        "{text}"
    );

    // A zone the server does not serve.
    let key = knot.key(SHA256_KEY, TsigAlgorithm::HmacSha256, SHA256_SECRET);
    let err = replace_address(
        knot.addr,
        "other.test.",
        "www.other.test.",
        60,
        ip("10.6.6.6"),
        &key,
        TIMEOUT,
    )
    .await
    .expect_err("an unserved zone must be refused");
    println!("unserved zone: {err}");
    assert!(matches!(err, DnsError::UpdateRejected { .. }), "{err}");

    let after = query_address(knot.addr, WWW, AddressType::A)
        .await
        .expect("query");
    assert_eq!(
        before, after,
        "refused updates must leave the record unchanged"
    );
}

#[tokio::test]
async fn a_large_answer_is_fetched_over_tcp() {
    let Some(knot) = Knot::start("a_large_answer_is_fetched_over_tcp").await else {
        return;
    };
    let addresses = query_address(knot.addr, "big.example.test.", AddressType::A)
        .await
        .expect("query");
    assert_eq!(
        addresses.len(),
        120,
        "a truncated answer must be retried over TCP"
    );
    assert!(
        query_address(knot.addr, "nothing.example.test.", AddressType::A)
            .await
            .expect("NXDOMAIN is an empty answer")
            .is_empty()
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_and_clearly() {
    let key = Tsig {
        key_name: SHA256_KEY.into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret: b"any".to_vec(),
    };

    // A closed port: the ICMP port-unreachable ends the attempt long before the timeout.
    let closed = {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("local addr")
    };
    let started = Instant::now();
    let err = replace_address(closed, ZONE, WWW, 60, ip("10.1.2.3"), &key, TIMEOUT)
        .await
        .expect_err("nothing listens there");
    let text = err.to_string();
    println!("closed port: {text}");
    assert!(matches!(err, DnsError::Unreachable { .. }), "{text}");
    assert!(
        text.contains(&closed.to_string()) && text.contains("unreachable"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = query_address(closed, WWW, AddressType::A)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");

    // A silent server (a socket nobody reads): only the deadline ends the wait, and the
    // transmissions are retried meanwhile.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("local addr");
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let err = replace_address(silent_addr, ZONE, WWW, 60, ip("10.1.2.3"), &key, timeout)
        .await
        .expect_err("nobody answers");
    let elapsed = started.elapsed();
    let text = err.to_string();
    println!("silent server: {text}");
    assert!(matches!(err, DnsError::Timeout { .. }), "{text}");
    assert!(
        text.contains("no answer") && text.contains("2 UDP"),
        "{text}"
    );
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(1),
        "{elapsed:?}"
    );
    drop(silent);
}
