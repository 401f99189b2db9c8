//! A throw-away Ethernet segment of network namespaces for the floating
//! address tests: a "switch" namespace holding a bridge, and namespaces
//! `n1`, `n2` and `client` each joined to it by a veth pair.
//!
//! | namespace | eth0 MAC          | IPv4         | IPv6        |
//! |-----------|-------------------|--------------|-------------|
//! | n1        | 02:77:00:00:00:01 | 10.77.0.1/24 | fd77::1/64  |
//! | n2        | 02:77:00:00:00:02 | 10.77.0.2/24 | fd77::2/64  |
//! | client    | 02:77:00:00:00:64 | 10.77.0.100  | fd77::100   |
//!
//! Fixed MACs make the neighbour-table assertions readable. Everything is
//! created with `ip -n`, so the root namespace's interfaces are never
//! touched, and everything is deleted by [`Lab`]'s `Drop`, which also runs
//! when a test panics. Names are `uvip<pid>-<seq>-<role>`: the pid lets a
//! later run delete what a killed run left behind without touching a
//! concurrent run's namespaces.
//!
//! Code under test runs in a namespace through [`in_netns`]: a dedicated
//! thread enters the namespace with `setns(CLONE_NEWNET)` and runs the future
//! on its own current-thread tokio runtime, so every socket the code opens
//! (netlink, packet, ICMPv6) is created in that namespace.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const PREFIX: &str = "uvip";
static SEQ: AtomicUsize = AtomicUsize::new(0);

pub const N1_MAC: &str = "02:77:00:00:00:01";
pub const N2_MAC: &str = "02:77:00:00:00:02";
pub const CLIENT_MAC: &str = "02:77:00:00:00:64";

/// Namespace role, MAC, IPv4, IPv6 of each host on the segment.
const HOSTS: [(&str, &str, &str, &str); 3] = [
    ("n1", N1_MAC, "10.77.0.1/24", "fd77::1/64"),
    ("n2", N2_MAC, "10.77.0.2/24", "fd77::2/64"),
    ("client", CLIENT_MAC, "10.77.0.100/24", "fd77::100/64"),
];

/// Whether the test can run: true as root. Otherwise prints SKIP and returns
/// false, except under CI (`CI=true`), where a skipped system test would
/// hide a broken setup, so it panics.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root to create network namespaces; under CI=true this is a failure, not a skip");
    }
    println!("SKIP {test}: needs root to create network namespaces");
    false
}

/// Runs `ip` with `args` and returns its stdout; panics with its stderr on
/// failure (setup commands must work, or the test means nothing).
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces of earlier runs whose process is gone (a run killed
/// before its `Drop` could clean up).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// The segment; dropping it deletes every namespace (and with them every
/// veth and the bridge).
pub struct Lab {
    tag: String,
    created: Vec<String>,
}

impl Lab {
    pub fn new() -> Lab {
        sweep_stale();
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = Lab {
            tag,
            created: Vec::new(),
        };
        for role in ["sw", "n1", "n2", "client"] {
            let name = lab.ns(role);
            ip(&["netns", "add", &name]);
            // Recorded right away so a failure further down still deletes it.
            lab.created.push(name);
        }
        let sw = lab.ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (role, mac, v4, v6) in HOSTS {
            let ns = lab.ns(role);
            ip(&[
                "-n", &sw, "link", "add", role, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &sw, "link", "set", role, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", role, "up"]);
            ip(&["-n", &ns, "link", "set", "eth0", "address", mac]);
            ip(&["-n", &ns, "addr", "add", v4, "dev", "eth0"]);
            ip(&["-n", &ns, "addr", "add", v6, "dev", "eth0", "nodad"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// The full namespace name of a role (`sw`, `n1`, `n2`, `client`).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// `ip -o addr show dev eth0` in a role's namespace.
    pub fn addrs(&self, role: &str) -> String {
        ip(&["-n", &self.ns(role), "-o", "addr", "show", "dev", "eth0"])
    }

    /// The MAC a role's neighbour table has for `addr`, if any (`ip -n ...
    /// neigh show`, with `-6` for IPv6 addresses).
    pub fn neigh_mac(&self, role: &str, addr: &str) -> Option<String> {
        let ns = self.ns(role);
        let family = if addr.contains(':') { "-6" } else { "-4" };
        let out = ip(&[family, "-n", &ns, "neigh", "show", addr, "dev", "eth0"]);
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_owned)
    }

    /// Polls the neighbour table of `role` until `addr` maps to `mac`;
    /// returns how long that took, or None after `within`.
    pub fn wait_neigh(
        &self,
        role: &str,
        addr: &str,
        mac: &str,
        within: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.neigh_mac(role, addr).as_deref() == Some(mac) {
                return Some(start.elapsed());
            }
            if start.elapsed() >= within {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// One ping from a role's namespace, waiting at most a second.
    pub fn ping(&self, role: &str, addr: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(role),
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                addr,
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or_else(|e| panic!("cannot run ping (install iputils-ping): {e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the calling thread into the named network namespace.
fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open namespace {ns}: {e}"));
    // SAFETY: a valid namespace descriptor; only this thread changes
    // namespace (CLONE_NEWNET is allowed in a multi-threaded process).
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {ns}: {}",
        std::io::Error::last_os_error()
    );
}

/// Starts `f` on a new thread inside namespace `ns`, on that thread's own
/// current-thread tokio runtime. Tasks the future spawns live only as long
/// as it runs, so the future must await whatever it wants finished.
pub fn spawn_in_netns<T, F, Fut>(ns: &str, f: F) -> JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(f())
    })
}

/// [`spawn_in_netns`] and wait for the result; a panic in the namespace
/// thread is re-raised here.
pub fn in_netns<T, F, Fut>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    join(spawn_in_netns(ns, f))
}

pub fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Records every frame of `ethertype` arriving on `eth0` of namespace `ns`
/// for `duration`, with its arrival time. Used to check what actually went
/// on the wire. `ready` is signalled once the socket is listening.
pub fn capture(
    ns: &str,
    ethertype: u16,
    duration: Duration,
    ready: std::sync::mpsc::Sender<()>,
) -> JoinHandle<Vec<(Instant, Vec<u8>)>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter(&ns);
        // SAFETY: plain syscalls on a descriptor this function owns; the
        // pointers passed describe live locals.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(ethertype.to_be()),
            );
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let _ = ready.send(());
            let mut frames = Vec::new();
            let mut buf = [0u8; 2048];
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0 {
                    frames.push((Instant::now(), buf[..n as usize].to_vec()));
                }
            }
            libc::close(fd);
            frames
        }
    })
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
