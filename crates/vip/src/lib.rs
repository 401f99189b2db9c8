//! `understudy-vip`: the floating IP address of an Understudy pair.
//!
//! The active node holds one address (IPv4 or IPv6) that clients use; on
//! failover it must leave the old node and appear on the new one, and every
//! neighbour's ARP / neighbour cache must learn the new node's MAC at once
//! rather than after its entry times out. A [`Vip`] does the three parts:
//!
//! - **Take and release** the address through netlink (the `rtnetlink`
//!   crate), not the `ip` command: [`Vip::add`], [`Vip::remove`],
//!   [`Vip::is_present`]. Both changes are idempotent, so a retried
//!   promotion or demotion is harmless. IPv6 addresses are added with
//!   `IFA_F_NODAD`, so they are usable immediately instead of tentative.
//! - **Announce** it: IPv4 gratuitous ARP (a broadcast ARP request with
//!   sender IP = target IP = the address, as Pacemaker's IPaddr2 sends) over
//!   an `AF_PACKET` socket, or for IPv6 an unsolicited Neighbor Advertisement
//!   with the override flag to `ff02::1` over an ICMPv6 raw socket.
//!   [`Vip::add_and_announce`] and [`Vip::announce`] send the **first**
//!   announcement before they return and the remaining `arp_count - 1`,
//!   `arp_interval` apart, from a spawned task, so failover is not delayed by
//!   the repeats (800 ms with the defaults). The returned [`Announcement`]
//!   can be awaited or aborted; [`Vip::remove`] aborts it too, so a node
//!   that lets go of the address stops claiming it.
//! - **Probe** for another holder before taking it: [`Vip::probe_conflict`]
//!   sends RFC 5227 ARP probes (IPv4) or DAD-style Neighbor Solicitations
//!   from `::` (IPv6) and reports the MAC of any other host that answers.
//!
//! Requirements: Linux, `CAP_NET_ADMIN` (addresses) and `CAP_NET_RAW` (raw
//! sockets), a tokio runtime (the calls spawn tasks, so use them inside
//! one), and an Ethernet interface for announcements and probes.
//!
//! Network namespaces: a socket belongs to the namespace of the thread that
//! creates it, and each call opens its sockets (netlink, packet, ICMPv6) on
//! whichever runtime thread polls it. In a process that lives in one
//! namespace, the normal case, that is simply the process's namespace. To act
//! on another namespace, make the calls on a current-thread runtime driven
//! by a thread that has entered it with `setns(CLONE_NEWNET)`, as the tests
//! do. The background repeats of an announcement reuse the socket opened for
//! the first one, so they go out where the first one did.
//!
//! ```no_run
//! # async fn demo() -> Result<(), understudy_vip::Error> {
//! use std::time::Duration;
//! use understudy_vip::Vip;
//!
//! let vip = Vip::new("10.77.0.50".parse().expect("literal"), 24, "pub0")?;
//! if let Some(mac) = vip.probe_conflict(Duration::from_millis(500)).await? {
//!     panic!("10.77.0.50 is already used by {mac}");
//! }
//! let announcement = vip.add_and_announce().await?; // first GARP already sent
//! // ... later, on demotion (also stops the remaining announcements):
//! vip.remove().await?;
//! # drop(announcement);
//! # Ok(()) }
//! ```

mod netlink;
mod packet;
mod sock;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::netlink::{errno, Link, Netlink};
use crate::packet::Mac;
use crate::sock::{Icmpv6Socket, PacketSocket};

/// How many announcements [`Vip::add_and_announce`] sends unless told
/// otherwise: Pacemaker IPaddr2's default. Repeats cover a lost frame and a
/// switch port that is still learning.
pub const DEFAULT_ARP_COUNT: u32 = 5;
/// The default gap between two announcements.
pub const DEFAULT_ARP_INTERVAL: Duration = Duration::from_millis(200);

/// How many probes [`Vip::probe_conflict`] spreads over its wait, so one
/// lost frame does not hide a conflict (RFC 5227 also sends three).
const PROBE_COUNT: u32 = 3;
/// Large enough for the headers of any frame we parse; longer frames are
/// truncated by the kernel, which is harmless because we only read headers.
const RECV_BUF: usize = 2048;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Linux's limit on interface names (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Everything that can go wrong with the floating address. Every variant
/// names the address and, where one is involved, the interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The prefix length is too long for the address family.
    #[error(
        "invalid floating address {address}/{prefix_len}: the prefix length must be at most {max}"
    )]
    InvalidPrefix {
        address: IpAddr,
        prefix_len: u8,
        max: u8,
    },
    /// The address cannot be a host's unicast address.
    #[error("invalid floating address {address}: {reason}")]
    InvalidAddress {
        address: IpAddr,
        reason: &'static str,
    },
    /// The interface name cannot be a Linux interface name.
    #[error("invalid interface name {interface:?} for {address}: {reason}")]
    InvalidInterface {
        interface: String,
        address: IpAddr,
        reason: &'static str,
    },
    /// No interface of that name exists in this network namespace.
    #[error("interface {interface} does not exist (needed for {address})")]
    NoSuchInterface { interface: String, address: IpAddr },
    /// Announcing and probing build Ethernet frames; other link types (and
    /// Ethernet without a MAC) are not supported.
    #[error("interface {interface} is not an Ethernet interface with a MAC address, so {address} cannot be announced or probed on it")]
    NotEthernet { interface: String, address: IpAddr },
    /// [`Vip::announce`] was asked to announce an address this host does
    /// not have: that would pull the traffic away from whoever does.
    #[error("refusing to announce {address} on interface {interface}: the address is not on it")]
    NotHeld { interface: String, address: IpAddr },
    /// The kernel refused a netlink request.
    #[error("{action} {address} on interface {interface}: {source}")]
    Netlink {
        action: &'static str,
        interface: String,
        address: IpAddr,
        /// Boxed: rtnetlink's error carries a whole netlink message, which
        /// would make every `Result` of this crate large.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A socket operation failed.
    #[error("{action} {address} on interface {interface}: {source}")]
    Io {
        action: &'static str,
        interface: String,
        address: IpAddr,
        #[source]
        source: io::Error,
    },
    /// The background task sending the repeated announcements panicked.
    #[error("announcing {address} on interface {interface}: the background task panicked")]
    AnnouncerPanicked { interface: String, address: IpAddr },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One floating address on one interface, with how to announce it.
///
/// Cheap to clone; clones share the handle of the announcement in progress,
/// so [`Vip::remove`] on any clone stops the announcement started by another.
#[derive(Clone)]
pub struct Vip {
    address: IpAddr,
    prefix_len: u8,
    interface: String,
    arp_count: u32,
    arp_interval: Duration,
    /// The background part of the latest announcement, aborted when the
    /// address is removed or announced afresh.
    pending: Arc<Mutex<Option<AbortHandle>>>,
}

impl fmt::Debug for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vip")
            .field("address", &self.address)
            .field("prefix_len", &self.prefix_len)
            .field("interface", &self.interface)
            .field("arp_count", &self.arp_count)
            .field("arp_interval", &self.arp_interval)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} on {}",
            self.address, self.prefix_len, self.interface
        )
    }
}

impl Vip {
    /// A floating address `address/prefix_len` on `interface`, announced
    /// [`DEFAULT_ARP_COUNT`] times [`DEFAULT_ARP_INTERVAL`] apart.
    ///
    /// Checks only what can be checked without the system (prefix length,
    /// that the address is unicast, that the name could be an interface
    /// name); whether the interface exists is found out when it is used,
    /// since interfaces come and go.
    pub fn new(address: IpAddr, prefix_len: u8, interface: impl Into<String>) -> Result<Self> {
        let interface = interface.into();
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(Error::InvalidPrefix {
                address,
                prefix_len,
                max,
            });
        }
        let bad_address = match address {
            _ if address.is_unspecified() => Some("the unspecified address cannot be held"),
            _ if address.is_multicast() => Some("a multicast address cannot be held"),
            _ if address.is_loopback() => Some("a loopback address cannot float between hosts"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address cannot be held"),
            _ => None,
        };
        if let Some(reason) = bad_address {
            return Err(Error::InvalidAddress { address, reason });
        }
        let bad_name = if interface.is_empty() {
            Some("empty")
        } else if interface.len() > MAX_IFNAME {
            Some("longer than 15 bytes")
        } else if interface == "." || interface == ".." {
            Some("reserved name")
        } else if interface
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            Some("contains '/', ':', whitespace or a control character")
        } else {
            None
        };
        if let Some(reason) = bad_name {
            return Err(Error::InvalidInterface {
                interface,
                address,
                reason,
            });
        }
        Ok(Self {
            address,
            prefix_len,
            interface,
            arp_count: DEFAULT_ARP_COUNT,
            arp_interval: DEFAULT_ARP_INTERVAL,
            pending: Arc::new(Mutex::new(None)),
        })
    }

    /// Sets how many announcements to send and how far apart. A count of 0
    /// turns announcing off.
    pub fn with_announcements(mut self, count: u32, interval: Duration) -> Self {
        self.arp_count = count;
        self.arp_interval = interval;
        self
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn arp_count(&self) -> u32 {
        self.arp_count
    }

    pub fn arp_interval(&self) -> Duration {
        self.arp_interval
    }

    /// Adds the address to the interface. Already present is success, so a
    /// retried promotion does not fail (if it is present with another prefix
    /// length, that one stays).
    pub async fn add(&self) -> Result<()> {
        const ACTION: &str = "adding";
        let nl = self.connect(ACTION)?;
        let link = self.require_link(&nl, ACTION).await?;
        match nl.add(link.index, self.address, self.prefix_len).await {
            Ok(()) => {
                tracing::info!(vip = %self, "floating address added");
                Ok(())
            }
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                tracing::debug!(vip = %self, "floating address already present");
                Ok(())
            }
            Err(e) => Err(self.netlink_error(ACTION, e)),
        }
    }

    /// Removes the address from the interface, first stopping any
    /// announcement of it still in progress. Already absent is success, and
    /// so is a missing interface (it cannot hold the address either): what a
    /// demotion needs is that this node no longer holds it.
    ///
    /// Kernel behaviour to know about: if the floating IPv4 address is the
    /// *primary* address of its subnet on the interface (the node has no
    /// address of its own there, or the floating one was added first), the
    /// kernel deletes that subnet's secondary addresses along with it unless
    /// `net.ipv4.conf.<interface>.promote_secondaries` is 1.
    pub async fn remove(&self) -> Result<()> {
        const ACTION: &str = "removing";
        self.stop_announcing();
        let nl = self.connect(ACTION)?;
        let Some(link) = self.link(&nl, ACTION).await? else {
            tracing::warn!(vip = %self, "interface does not exist; the address is not held");
            return Ok(());
        };
        let held = nl
            .addresses(link.index, self.address)
            .await
            .map_err(|e| self.netlink_error(ACTION, e))?;
        for msg in held {
            match nl.delete(msg).await {
                Ok(()) => tracing::info!(vip = %self, "floating address removed"),
                // Removed by someone else (or the interface went away)
                // between the listing and now: just as good.
                Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {}
                Err(e) => return Err(self.netlink_error(ACTION, e)),
            }
        }
        Ok(())
    }

    /// Whether the interface has the address (with any prefix length). A
    /// missing interface is an error here, unlike in [`Vip::remove`], so a
    /// misspelt interface name does not pass for "not held".
    pub async fn is_present(&self) -> Result<bool> {
        const ACTION: &str = "looking for";
        let nl = self.connect(ACTION)?;
        let link = self.require_link(&nl, ACTION).await?;
        let held = nl
            .addresses(link.index, self.address)
            .await
            .map_err(|e| self.netlink_error(ACTION, e))?;
        Ok(!held.is_empty())
    }

    /// [`Vip::add`], then [`Vip::announce`]: returns once the address is on
    /// the interface and the first announcement has been sent; the rest
    /// follow in the background (see [`Announcement`]).
    pub async fn add_and_announce(&self) -> Result<Announcement> {
        self.add().await?;
        self.announce().await
    }

    /// Tells the segment that this host now has the address: sends the first
    /// gratuitous ARP (IPv4) or unsolicited Neighbor Advertisement (IPv6)
    /// before returning and schedules the other `arp_count - 1`,
    /// `arp_interval` apart, on a spawned task. Await
    /// [`Announcement::finished`] to wait for all of them.
    ///
    /// An announcement of this `Vip` still in progress is stopped first.
    /// The address must be on the interface ([`Error::NotHeld`] otherwise):
    /// announcing an address held elsewhere would steal its traffic.
    pub async fn announce(&self) -> Result<Announcement> {
        const ACTION: &str = "announcing";
        self.stop_announcing();
        let done = Announcement {
            task: None,
            address: self.address,
            interface: self.interface.clone(),
        };
        if self.arp_count == 0 {
            return Ok(done);
        }
        let nl = self.connect(ACTION)?;
        let link = self.require_link(&nl, ACTION).await?;
        let held = nl
            .addresses(link.index, self.address)
            .await
            .map_err(|e| self.netlink_error(ACTION, e))?;
        drop(nl);
        if held.is_empty() {
            return Err(Error::NotHeld {
                interface: self.interface.clone(),
                address: self.address,
            });
        }
        let mac = self.require_mac(&link)?;
        let announcer = match self.address {
            IpAddr::V4(ip) => Announcer::Arp {
                sock: PacketSocket::open(link.index, None)
                    .map_err(|e| self.io_error("opening a packet socket to announce", e))?,
                frame: packet::gratuitous_arp(mac, ip),
            },
            IpAddr::V6(ip) => Announcer::Na {
                sock: Icmpv6Socket::open(link.index, ip)
                    .map_err(|e| self.io_error("opening an ICMPv6 socket to announce", e))?,
                msg: packet::neighbour_advertisement(ip, mac),
            },
        };
        announcer
            .send()
            .await
            .map_err(|e| self.io_error(ACTION, e))?;
        tracing::debug!(vip = %self, mac = %packet::format_mac(&mac), "sent announcement 1");
        let remaining = self.arp_count - 1;
        if remaining == 0 {
            return Ok(done);
        }
        let interval = self.arp_interval;
        let vip = self.to_string();
        let (address, interface) = (self.address, self.interface.clone());
        let task = tokio::spawn(async move {
            // Keep going after a failed send (a later one may get through)
            // but report the first failure.
            let mut first_error = None;
            for n in 0..remaining {
                tokio::time::sleep(interval).await;
                match announcer.send().await {
                    Ok(()) => tracing::debug!(vip, "sent announcement {}", n + 2),
                    Err(e) => {
                        tracing::warn!(vip, error = %e, "announcement {} failed", n + 2);
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                None => Ok(()),
                Some(source) => Err(Error::Io {
                    action: ACTION,
                    interface,
                    address,
                    source,
                }),
            }
        });
        // Another announce() racing with this one: the newer one wins.
        if let Some(older) = self.pending_slot().replace(task.abort_handle()) {
            older.abort();
        }
        Ok(Announcement {
            task: Some(task),
            ..done
        })
    }

    /// Looks for another host using the address, before taking it: sends
    /// RFC 5227 ARP probes (IPv4: sender IP 0.0.0.0, target IP = the
    /// address) or duplicate-address-detection Neighbor Solicitations (IPv6:
    /// from `::` to the address's solicited-node group), spread over `wait`,
    /// and listens for `wait` for a host claiming the address: an ARP request
    /// or reply with it as sender IP, or a Neighbor Advertisement for it.
    ///
    /// Returns the MAC (`aa:bb:cc:dd:ee:ff`) of the first other host that
    /// answers, or `None` if none did. This host's own answers are ignored,
    /// so probing an address this node already holds finds no conflict.
    /// A probe from a host that is itself probing for the address is not
    /// counted: in a pair, which node takes the address is the pair's
    /// decision, not a race to be settled here.
    pub async fn probe_conflict(&self, wait: Duration) -> Result<Option<String>> {
        const ACTION: &str = "probing for";
        let nl = self.connect(ACTION)?;
        let link = self.require_link(&nl, ACTION).await?;
        drop(nl);
        let mac = self.require_mac(&link)?;
        let (ethertype, probe) = match self.address {
            IpAddr::V4(ip) => (packet::ETH_P_ARP, packet::arp_probe(mac, ip)),
            IpAddr::V6(ip) => (packet::ETH_P_IPV6, packet::dad_solicitation(mac, ip)),
        };
        // Open (and so start listening) before the first probe goes out, so
        // a fast answer cannot be missed.
        let sock = PacketSocket::open(link.index, Some(ethertype))
            .map_err(|e| self.io_error("opening a packet socket for probing", e))?;
        let start = Instant::now();
        let deadline = start + wait;
        let spacing = wait / PROBE_COUNT;
        let mut sent = 0;
        let mut next_probe = start;
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let now = Instant::now();
            if sent < PROBE_COUNT && now >= next_probe {
                sock.send(&probe)
                    .await
                    .map_err(|e| self.io_error(ACTION, e))?;
                sent += 1;
                next_probe += spacing;
            }
            if now >= deadline {
                return Ok(None);
            }
            let until = if sent < PROBE_COUNT {
                next_probe.min(deadline)
            } else {
                deadline
            };
            let n = match tokio::time::timeout_at(until, sock.recv_incoming(&mut buf)).await {
                Err(_elapsed) => continue,
                Ok(received) => received.map_err(|e| self.io_error(ACTION, e))?,
            };
            let frame = buf.get(..n).unwrap_or(&buf);
            let claimant = match self.address {
                IpAddr::V4(ip) => packet::arp_claimant(frame, ip),
                IpAddr::V6(ip) => packet::na_claimant(frame, ip),
            };
            if let Some(other) = claimant.filter(|other| *other != mac) {
                let other = packet::format_mac(&other);
                tracing::warn!(vip = %self, holder = %other, "another host answers for the floating address");
                return Ok(Some(other));
            }
        }
    }

    fn pending_slot(&self) -> MutexGuard<'_, Option<AbortHandle>> {
        // A panic while holding this lock cannot leave the Option in a
        // broken state, so a poisoned lock is still usable.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stop_announcing(&self) {
        if let Some(handle) = self.pending_slot().take() {
            handle.abort();
        }
    }

    fn connect(&self, action: &'static str) -> Result<Netlink> {
        Netlink::connect().map_err(|e| self.io_error(action, e))
    }

    async fn link(&self, nl: &Netlink, action: &'static str) -> Result<Option<Link>> {
        nl.link(&self.interface)
            .await
            .map_err(|e| self.netlink_error(action, e))
    }

    async fn require_link(&self, nl: &Netlink, action: &'static str) -> Result<Link> {
        self.link(nl, action)
            .await?
            .ok_or_else(|| Error::NoSuchInterface {
                interface: self.interface.clone(),
                address: self.address,
            })
    }

    fn require_mac(&self, link: &Link) -> Result<Mac> {
        link.mac.ok_or_else(|| Error::NotEthernet {
            interface: self.interface.clone(),
            address: self.address,
        })
    }

    fn netlink_error(&self, action: &'static str, source: rtnetlink::Error) -> Error {
        Error::Netlink {
            action,
            interface: self.interface.clone(),
            address: self.address,
            source: Box::new(source),
        }
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> Error {
        Error::Io {
            action,
            interface: self.interface.clone(),
            address: self.address,
            source,
        }
    }
}

/// The socket and packet an announcement repeats.
enum Announcer {
    Arp { sock: PacketSocket, frame: Vec<u8> },
    Na { sock: Icmpv6Socket, msg: [u8; 32] },
}

impl Announcer {
    async fn send(&self) -> io::Result<()> {
        match self {
            Self::Arp { sock, frame } => sock.send(frame).await,
            Self::Na { sock, msg } => sock.send_to(msg, ALL_NODES).await,
        }
    }
}

/// The rest of an announcement, after its first packet went out.
///
/// Dropping it lets the remaining announcements carry on in the background
/// (they stop early only if [`Vip::remove`] or a new [`Vip::announce`] is
/// called on the same `Vip` or a clone, or the runtime shuts down).
#[derive(Debug)]
pub struct Announcement {
    task: Option<JoinHandle<Result<()>>>,
    address: IpAddr,
    interface: String,
}

impl Announcement {
    /// Whether every announcement has been sent (or the rest were stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the announcements not yet sent.
    pub fn abort(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// Waits until the last announcement has been sent. Returns the first
    /// send error, if any; announcements stopped early count as success
    /// (they were stopped on purpose).
    pub async fn finished(self) -> Result<()> {
        let Some(task) = self.task else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(_) => Err(Error::AnnouncerPanicked {
                interface: self.interface,
                address: self.address,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal")
    }

    #[test]
    fn new_uses_pacemaker_defaults() {
        let vip = Vip::new(ip("10.77.0.50"), 24, "pub0").expect("valid");
        assert_eq!(vip.arp_count(), 5);
        assert_eq!(vip.arp_interval(), Duration::from_millis(200));
        assert_eq!(vip.to_string(), "10.77.0.50/24 on pub0");
        let vip = vip.with_announcements(2, Duration::from_millis(50));
        assert_eq!(
            (vip.arp_count(), vip.arp_interval()),
            (2, Duration::from_millis(50))
        );
    }

    #[test]
    fn prefix_length_is_checked_per_family() {
        assert!(Vip::new(ip("10.0.0.1"), 32, "eth0").is_ok());
        assert!(Vip::new(ip("fd77::1"), 128, "eth0").is_ok());
        let err = Vip::new(ip("10.0.0.1"), 33, "eth0").expect_err("too long");
        assert_eq!(
            err.to_string(),
            "invalid floating address 10.0.0.1/33: the prefix length must be at most 32"
        );
        assert!(Vip::new(ip("fd77::1"), 129, "eth0").is_err());
    }

    #[test]
    fn non_unicast_addresses_are_refused() {
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "127.0.0.2",
            "::1",
            "255.255.255.255",
        ] {
            let err = Vip::new(ip(bad), 24, "eth0").expect_err(bad);
            assert!(matches!(err, Error::InvalidAddress { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a-very-long-name0", "..", "eth0/1", "eth 0", "eth0:1"] {
            let err = Vip::new(ip("10.0.0.1"), 24, bad).expect_err(bad);
            assert!(
                err.to_string().contains("invalid interface name"),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("10.0.0.1"), "{err}");
        }
        assert!(Vip::new(ip("10.0.0.1"), 24, "pub0.100").is_ok());
    }

    #[test]
    fn errors_name_interface_and_address() {
        let err = Error::NoSuchInterface {
            interface: "pub0".into(),
            address: ip("10.0.0.5"),
        };
        assert_eq!(
            err.to_string(),
            "interface pub0 does not exist (needed for 10.0.0.5)"
        );
        let err = Error::Io {
            action: "announcing",
            interface: "pub0".into(),
            address: ip("fd77::50"),
            source: io::Error::from_raw_os_error(libc::ENETDOWN),
        };
        assert!(
            err.to_string()
                .starts_with("announcing fd77::50 on interface pub0: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn zero_announcements_is_finished_at_once() {
        // No system access happens for a count of zero, so this runs anywhere.
        let vip = Vip::new(ip("10.77.0.50"), 24, "pub0")
            .expect("valid")
            .with_announcements(0, Duration::ZERO);
        let a = vip.announce().await.expect("nothing to send");
        assert!(a.is_finished());
        a.finished().await.expect("ok");
    }
}
