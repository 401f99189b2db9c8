//! Shared by the identity tests and benchmarks: the floating address and web service
//! resources, a client requesting through the address from its own namespace, ARP
//! checks, and a node's power cut.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use understudy_testbed::Netns;

use super::Pair;

pub const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 60, 0, 50));

/// The floating address, then the service, as the README orders them.
pub fn resources() -> String {
    format!("{VIP_RESOURCE}\n{WEB_RESOURCE}")
}

pub const VIP_RESOURCE: &str = r#"[[resource]]
name = "address"
kind = "vip"
address = "10.60.0.50/24"
interface = "pub"
conflict_probe_ms = 200
monitor_interval_ms = 500
"#;

/// The demo key-value service, listening on every address of its node.
pub const WEB_RESOURCE: &str = r#"[[resource]]
name = "web"
kind = "exec"
start = "{bin} demo-service --listen 0.0.0.0:8080 --dir {dir}/data-$UNDERSTUDY_NODE --node $UNDERSTUDY_NODE >/dev/null 2>&1 & echo $! > {dir}/web-$UNDERSTUDY_NODE.pid; sleep 0.05"
stop = "kill $(cat {dir}/web-$UNDERSTUDY_NODE.pid) 2>/dev/null; true"
monitor = "kill -0 $(cat {dir}/web-$UNDERSTUDY_NODE.pid) 2>/dev/null || exit 7"
monitor_interval_ms = 300
start_timeout_ms = 5000
stop_timeout_ms = 5000
"#;

/// One HTTP GET of `/` through the floating address; the node that answered.
pub fn get_node(timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(VIP, 8080), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().last()?.strip_prefix("ok ").map(str::to_string)
}

/// A client in the client namespace requesting every 20 ms; records (time, answering node).
pub struct Client {
    stop: Arc<AtomicBool>,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One request of the client.
pub struct Sample {
    pub sent: Instant,
    /// When the answer came, or the request gave up.
    pub done: Instant,
    /// The node that answered, if any did.
    pub node: Option<String>,
}

impl Client {
    pub fn start(ns: &Netns) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let file =
            std::fs::File::open(format!("/var/run/netns/{}", ns.name())).expect("netns file");
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns moves only this thread, which we own and which ends with the loop.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            // Bounded: at most 10 minutes of samples.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                let answer = get_node(Duration::from_millis(200));
                samples2.lock().expect("samples").push(Sample {
                    sent,
                    done: Instant::now(),
                    node: answer,
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The outage after `from`: first failed request to the first success after it.
    /// Conservative: from the moment the first failing request was sent to the moment
    /// the first successful one after it got its answer.
    pub fn outage_after(&self, from: Instant) -> Option<Duration> {
        let samples = self.samples.lock().expect("samples");
        // Requests still in flight at `from` count: they may be the first to fail.
        let after: Vec<_> = samples.iter().filter(|s| s.done >= from).collect();
        let first_fail = after.iter().position(|s| s.node.is_none())?;
        let recovered = after[first_fail..].iter().find(|s| s.node.is_some())?;
        Some(recovered.done.duration_since(after[first_fail].sent))
    }

    /// Waits (bounded) until the client's latest request was answered by node `node`.
    pub fn wait_served_by(&self, node: usize, timeout: Duration) -> bool {
        understudy_testbed::wait_until(timeout, Duration::from_millis(10), || {
            (self.last_answer().as_deref() == Some(super::NAMES[node])).then_some(())
        })
        .is_some()
    }

    /// The takeover after a fault at `since`: node `node` serves within 6 s, and the
    /// client's outage is within `failover_timeout + 1 s`. Returns the outage.
    pub fn assert_takeover(&self, pair: &Pair, since: Instant, node: usize) -> Duration {
        assert!(
            self.wait_served_by(node, Duration::from_secs(6)),
            "the client is served by {}; logs in {}",
            super::NAMES[node],
            pair.dir().display()
        );
        let outage = self.outage_after(since).expect("an outage was observed");
        let limit = Duration::from_millis(pair.timing.failover_ms + 1000);
        assert!(outage <= limit, "outage {outage:?} over {limit:?}");
        outage
    }

    pub fn last_answer(&self) -> Option<String> {
        self.samples
            .lock()
            .expect("samples")
            .last()
            .and_then(|s| s.node.clone())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The MAC the client's neighbour table holds for the floating address.
pub fn client_arp(pair: &Pair) -> Option<String> {
    let out = pair
        .net
        .client()
        .run_ok(&["ip", "neigh", "show", &VIP.to_string()])
        .ok()?;
    let mut words = out.split_whitespace();
    words.by_ref().find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

pub fn node_mac(pair: &Pair, i: usize) -> String {
    let out = pair
        .net
        .node(i)
        .run_ok(&["cat", "/sys/class/net/pub/address"])
        .expect("mac");
    out.trim().to_string()
}

/// Power cut: every process in the node's namespace dies and its cables are pulled,
/// so its addresses vanish from the network as they would with the machine.
pub fn power_cut(pair: &mut Pair, i: usize) {
    // Cables first: a powered-off node says nothing more, while its processes die one by
    // one here (a service outliving the daemon for a moment would answer from a filesystem
    // whose server is gone, which no real power cut shows).
    pair.net.cut_public(i).expect("cut public");
    pair.net.cut_all_channels(i).expect("cut channel");
    pair.kill9(i);
    for pid in pair.net.node(i).pids() {
        // SAFETY: plain kill(2) on processes inside the namespace we created.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Sends one ARP request for the floating address from the client's `pub` interface and
/// returns every distinct MAC that answers within `wait`. Two MACs means two owners.
/// Must run on a thread that has entered the client's network namespace.
pub fn arp_owners(wait: Duration) -> std::io::Result<Vec<[u8; 6]>> {
    // SAFETY: plain socket(2)/ioctl/sendto/recvfrom on buffers we own, closed at the end.
    unsafe {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto));
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let close = |r| {
            libc::close(fd);
            r
        };
        let ifname = std::ffi::CString::new("pub").expect("name");
        let ifindex = libc::if_nametoindex(ifname.as_ptr());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        std::ptr::copy_nonoverlapping(ifname.as_ptr(), ifr.ifr_name.as_mut_ptr(), 4);
        if ifindex == 0 || libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) < 0 {
            return close(Err(std::io::Error::last_os_error()));
        }
        let my_mac: [u8; 6] = std::array::from_fn(|i| ifr.ifr_ifru.ifru_hwaddr.sa_data[i] as u8);
        let IpAddr::V4(vip) = VIP else {
            return close(Ok(Vec::new()));
        };
        let my_ip = [10u8, 60, 0, 100];
        let mut req = vec![0u8, 1, 8, 0, 6, 4, 0, 1];
        req.extend_from_slice(&my_mac);
        req.extend_from_slice(&my_ip);
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&vip.octets());
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = proto;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let sent = libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if sent < 0 {
            return close(Err(std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + wait;
        let mut owners: Vec<[u8; 6]> = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: left.as_micros().clamp(1, 999_999) as i64,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let mut buf = [0u8; 64];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 28 {
                continue;
            }
            // An ARP reply (op 2) whose sender IP is the floating address.
            if buf[6..8] == [0, 2] && buf[14..18] == vip.octets() {
                let mac: [u8; 6] = std::array::from_fn(|i| buf[8 + i]);
                if !owners.contains(&mac) {
                    owners.push(mac);
                }
            }
        }
        close(Ok(owners))
    }
}
