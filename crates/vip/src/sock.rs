//! The two kinds of raw socket the floating address needs, which neither std
//! nor tokio offer: an `AF_PACKET` socket bound to one interface (ARP frames
//! and hand-built IPv6 frames) and an ICMPv6 raw socket (neighbour
//! advertisements, where the kernel fills in the checksum and the IPv6
//! header).
//!
//! Both are non-blocking and registered with tokio's reactor. Like every
//! socket, they belong to the network namespace of the thread that creates
//! them, and keep it for their whole life even if used from another thread.

use std::io;
use std::mem;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::packet::Mac;

/// `sll_pkttype` of a frame this host sent: packet sockets see those too.
const PACKET_OUTGOING: u8 = 4;
/// `ICMP6_FILTER` from `<netinet/icmp6.h>` (not in the libc crate).
const ICMP6_FILTER: libc::c_int = 1;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn new_socket(domain: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is checked before use.
    let fd = check(unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, alive for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr_ll(ifindex: u32, protocol: u16, dst: Mac) -> io::Result<libc::sockaddr_ll> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range"))?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst);
    Ok(sll)
}

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface: it sends whole
/// Ethernet frames and, if opened with a protocol, receives that protocol's
/// frames from the interface.
pub(crate) struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

impl PacketSocket {
    /// `listen`: the ethertype to receive, or `None` for a send-only socket
    /// (protocol 0 makes the kernel deliver nothing to it, so a socket kept
    /// open for repeated announcements never queues the segment's traffic).
    pub(crate) fn open(ifindex: u32, listen: Option<u16>) -> io::Result<Self> {
        let protocol = listen.unwrap_or(0);
        let fd = new_socket(libc::AF_PACKET, libc::c_int::from(protocol.to_be()))?;
        let sll = sockaddr_ll(ifindex, protocol, [0; 6])?;
        // SAFETY: the pointer and length describe `sll`, alive for the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        // SAFETY: the AsyncFd owns `fd` and nothing closes or replaces it
        // while it is registered.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)?
        };
        Ok(Self { fd, ifindex })
    }

    /// Sends one complete Ethernet frame (header included) out of the bound
    /// interface. The ethertype and destination are repeated in the socket
    /// address so the kernel tags the buffer with the right protocol even on
    /// a send-only socket.
    pub(crate) async fn send(&self, frame: &[u8]) -> io::Result<()> {
        let (dst, ethertype) = match (frame.get(0..6), frame.get(12..14)) {
            (Some(d), Some(t)) => {
                let mut dst = [0; 6];
                dst.copy_from_slice(d);
                (dst, u16::from_be_bytes([t[0], t[1]]))
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "frame shorter than an Ethernet header",
                ))
            }
        };
        let sll = sockaddr_ll(self.ifindex, ethertype, dst)?;
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: buffer and address pointers/lengths describe live
                // values for the duration of the call.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&sll as *const libc::sockaddr_ll).cast(),
                        mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                sent_all(n, frame.len())
            })
            .await
    }

    /// Receives one frame sent *to* this host by another. Frames this host
    /// transmitted (which packet sockets also see) are skipped.
    pub(crate) async fn recv_incoming(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (n, pkttype) = self
                .fd
                .async_io(Interest::READABLE, |fd| {
                    // SAFETY: sockaddr_ll is plain old data.
                    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
                    let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    // SAFETY: `buf` and `sll` are valid for writes of the
                    // lengths passed, for the duration of the call.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut sll as *mut libc::sockaddr_ll).cast(),
                            &mut len,
                        )
                    };
                    if n < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // `n` is non-negative here and at most `buf.len()`.
                    Ok((n as usize, sll.sll_pkttype))
                })
                .await?;
            if pkttype != PACKET_OUTGOING {
                return Ok(n);
            }
        }
    }
}

fn sent_all(n: isize, want: usize) -> io::Result<()> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != want {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send of a raw packet",
        ))
    } else {
        Ok(())
    }
}

fn sockaddr_in6(addr: Ipv6Addr, ifindex: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = addr.octets();
    // Link-local and multicast-link-local addresses only mean something
    // together with an interface.
    if is_link_scoped(addr) {
        sa.sin6_scope_id = ifindex;
    }
    sa
}

fn is_link_scoped(addr: Ipv6Addr) -> bool {
    let s = addr.segments();
    (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff0f) == 0xff02
}

/// A send-only ICMPv6 raw socket for neighbour advertisements out of one
/// interface, with hop limit 255 as neighbour discovery requires.
pub(crate) struct Icmpv6Socket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

impl Icmpv6Socket {
    /// `source`: the address to send from. Binding to the floating address
    /// makes the advertisement come from the address it announces, as the
    /// kernel's own unsolicited advertisements do; it also fails (with
    /// EADDRNOTAVAIL) if the address is not on this host, so nothing is
    /// announced for an address we do not hold.
    pub(crate) fn open(ifindex: u32, source: Ipv6Addr) -> io::Result<Self> {
        let fd = new_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
        let ifindex_int = libc::c_int::try_from(ifindex).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range")
        })?;
        let hops = libc::c_int::from(crate::packet::ND_HOP_LIMIT);
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, hops)?;
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, hops)?;
        set_int_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            ifindex_int,
        )?;
        // Our own advertisement looped back would only make the kernel log
        // that someone advertises our address.
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
        // We never read from this socket: block every ICMPv6 type so the
        // receive queue does not fill while announcements are in progress.
        let block_all = [u32::MAX; 8];
        // SAFETY: the pointer and length describe `block_all`, alive for the
        // call; the kernel expects a 32-byte `struct icmp6_filter`.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_ICMPV6,
                ICMP6_FILTER,
                block_all.as_ptr().cast(),
                mem::size_of_val(&block_all) as libc::socklen_t,
            )
        })?;
        let sa = sockaddr_in6(source, ifindex);
        // SAFETY: the pointer and length describe `sa`, alive for the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        })?;
        // SAFETY: the AsyncFd owns `fd` and nothing closes or replaces it
        // while it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE)? };
        Ok(Self { fd, ifindex })
    }

    /// Sends one ICMPv6 message (header included, checksum computed by the
    /// kernel) to `dst` out of the socket's interface.
    pub(crate) async fn send_to(&self, msg: &[u8], dst: Ipv6Addr) -> io::Result<()> {
        let sa = sockaddr_in6(dst, self.ifindex);
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: buffer and address pointers/lengths describe live
                // values for the duration of the call.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        msg.as_ptr().cast(),
                        msg.len(),
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                };
                sent_all(n, msg.len())
            })
            .await
    }
}
