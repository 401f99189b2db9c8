//! Frame builders and parsers for the ARP and IPv6 neighbour-discovery
//! packets the floating address needs: gratuitous ARP, RFC 5227 ARP probes,
//! unsolicited Neighbor Advertisements and DAD-style Neighbor Solicitations.
//!
//! Everything here is a pure function over byte slices, so the wire layout is
//! unit-tested without sockets or privileges. Parsers never panic on short or
//! malformed input: frames come from the network.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet (EUI-48) hardware address.
pub(crate) type Mac = [u8; 6];

pub(crate) const BROADCAST_MAC: Mac = [0xff; 6];
pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

const ETH_HLEN: usize = 14;
/// Minimum Ethernet frame without the FCS. Packet sockets hand frames to the
/// driver as they are; padding here keeps short ARP frames valid on NICs that
/// do not pad by themselves.
const ETH_MIN_FRAME: usize = 60;
const ARP_LEN: usize = 28;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const IPV6_HLEN: usize = 40;
const IPPROTO_ICMPV6: u8 = 58;
/// Neighbour discovery packets must carry hop limit 255 (RFC 4861 §7.1): the
/// receiver uses it to know the packet was not routed from elsewhere.
pub(crate) const ND_HOP_LIMIT: u8 = 255;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// Override flag of a Neighbor Advertisement: tells receivers to replace a
/// cached link-layer address instead of keeping the old one.
const NA_FLAG_OVERRIDE: u8 = 0x20;

/// Formats a MAC the way `ip link` prints it: lowercase, colon-separated.
pub(crate) fn format_mac(mac: &Mac) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

fn ethernet_header(frame: &mut Vec<u8>, dst: Mac, src: Mac, ethertype: u16) {
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
}

/// A broadcast ARP request frame for Ethernet/IPv4 with a zero target
/// hardware address (RFC 5227 says receivers ignore it and senders should
/// zero it).
fn arp_request(src_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_MIN_FRAME);
    ethernet_header(&mut frame, BROADCAST_MAC, src_mac, ETH_P_ARP);
    frame.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    frame.push(6); // hardware address length
    frame.push(4); // protocol address length
    frame.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&sender_ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target_ip.octets());
    frame.resize(ETH_MIN_FRAME, 0);
    frame
}

/// Gratuitous ARP as Pacemaker's IPaddr2 sends it: a broadcast *request* whose
/// sender and target IP are both the address. A request rather than a reply
/// because every Linux host processes broadcast requests, and `sender IP ==
/// target IP` makes Linux treat it as gratuitous and override an existing
/// cache entry even inside its `locktime`.
pub(crate) fn gratuitous_arp(src_mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp_request(src_mac, ip, ip)
}

/// RFC 5227 ARP probe: sender IP 0.0.0.0 so that no host updates its cache
/// from it, target IP = the address being checked. A host holding the address
/// answers with a reply.
pub(crate) fn arp_probe(src_mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp_request(src_mac, Ipv4Addr::UNSPECIFIED, ip)
}

/// If `frame` is an Ethernet ARP request or reply whose *sender* IP is `ip`,
/// the sender's hardware address: that host claims the address.
pub(crate) fn arp_claimant(frame: &[u8], ip: Ipv4Addr) -> Option<Mac> {
    if frame.len() < ETH_HLEN + ARP_LEN || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[ETH_HLEN..ETH_HLEN + ARP_LEN];
    let well_formed = arp[0..2] == 1u16.to_be_bytes()
        && arp[2..4] == 0x0800u16.to_be_bytes()
        && arp[4] == 6
        && arp[5] == 4;
    let op = u16::from_be_bytes([arp[6], arp[7]]);
    if !well_formed || (op != ARPOP_REQUEST && op != ARPOP_REPLY) {
        return None;
    }
    let sender_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    if sender_ip != ip {
        return None;
    }
    let mut mac = [0; 6];
    mac.copy_from_slice(&arp[8..14]);
    Some(mac)
}

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1): where
/// the holder of `addr` listens for Neighbor Solicitations.
pub(crate) fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet multicast address an IPv6 multicast address maps to
/// (RFC 2464 §7): 33:33 followed by its last four bytes.
pub(crate) fn ipv6_multicast_mac(addr: Ipv6Addr) -> Mac {
    let o = addr.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 part of an unsolicited Neighbor Advertisement for `target`,
/// with the override flag and a target link-layer address option, checksum
/// left zero for the kernel to fill in (raw ICMPv6 sockets always do).
/// Solicited is clear because nobody asked (RFC 4861 §7.2.6); router is clear
/// because the floating address belongs to a host.
pub(crate) fn neighbour_advertisement(target: Ipv6Addr, mac: Mac) -> [u8; 32] {
    let mut msg = [0u8; 32];
    msg[0] = ND_NEIGHBOR_ADVERT;
    msg[4] = NA_FLAG_OVERRIDE;
    msg[8..24].copy_from_slice(&target.octets());
    msg[24] = ND_OPT_TARGET_LL_ADDR;
    msg[25] = 1; // option length in units of 8 bytes
    msg[26..32].copy_from_slice(&mac);
    msg
}

/// A complete Ethernet frame carrying a duplicate-address-detection Neighbor
/// Solicitation for `target`: from the unspecified address `::` (so nobody
/// caches anything from it) to `target`'s solicited-node group. Built by hand
/// because the kernel will not send from `::` through an ICMPv6 socket.
pub(crate) fn dad_solicitation(src_mac: Mac, target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    // RFC 4861 §4.3: no source link-layer option when the source is `::`.
    let mut icmp = [0u8; 24];
    icmp[0] = ND_NEIGHBOR_SOLICIT;
    icmp[8..24].copy_from_slice(&target.octets());
    let sum = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut frame = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + icmp.len());
    ethernet_header(&mut frame, ipv6_multicast_mac(dst), src_mac, ETH_P_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class, no flow label
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.push(IPPROTO_ICMPV6);
    frame.push(ND_HOP_LIMIT);
    frame.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// The ICMPv6 checksum (RFC 4443 §2.3) over the IPv6 pseudo-header and `msg`
/// (whose checksum field must be zero).
pub(crate) fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = match chunk {
                [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                [hi] => u16::from_be_bytes([*hi, 0]),
                _ => 0,
            };
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// If `frame` is an Ethernet frame carrying a Neighbor Advertisement for
/// `target`, the advertised hardware address: the target link-layer address
/// option when present (it names the owner even through a proxy), otherwise
/// the frame's source MAC.
pub(crate) fn na_claimant(frame: &[u8], target: Ipv6Addr) -> Option<Mac> {
    if frame.len() < ETH_HLEN + IPV6_HLEN || frame[12..14] != ETH_P_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    // Only a packet with no extension headers: NDP never uses them, and a
    // forged one with hop limit < 255 was routed, so it is not a neighbour.
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_ICMPV6 || ip[7] != ND_HOP_LIMIT {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let icmp = ip.get(IPV6_HLEN..IPV6_HLEN + payload_len)?;
    if icmp.len() < 24 || icmp[0] != ND_NEIGHBOR_ADVERT || icmp[1] != 0 {
        return None;
    }
    if icmp[8..24] != target.octets() {
        return None;
    }
    let mut options = &icmp[24..];
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            break; // malformed; RFC 4861 says drop, fall back to the frame source
        }
        if options[0] == ND_OPT_TARGET_LL_ADDR {
            let mut mac = [0; 6];
            mac.copy_from_slice(&options[2..8]);
            return Some(mac);
        }
        options = &options[len..];
    }
    let mut mac = [0; 6];
    mac.copy_from_slice(&frame[6..12]);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x77, 0, 0, 0, 0x02];
    const OTHER: Mac = [0x02, 0x77, 0, 0, 0, 0x01];

    #[test]
    fn mac_formats_like_ip_link() {
        assert_eq!(
            format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
    }

    #[test]
    fn gratuitous_arp_layout() {
        let ip = Ipv4Addr::new(10, 77, 0, 50);
        let f = gratuitous_arp(MAC, ip);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &BROADCAST_MAC);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        assert_eq!(&f[22..28], &MAC); // sender MAC
        assert_eq!(&f[28..32], &ip.octets()); // sender IP
        assert_eq!(&f[32..38], &[0; 6]); // target MAC
        assert_eq!(&f[38..42], &ip.octets()); // target IP
                                              // Our own announcement claims the address for our MAC.
        assert_eq!(arp_claimant(&f, ip), Some(MAC));
    }

    #[test]
    fn arp_probe_has_zero_sender_and_claims_nothing() {
        let ip = Ipv4Addr::new(10, 77, 0, 50);
        let f = arp_probe(MAC, ip);
        assert_eq!(&f[28..32], &[0, 0, 0, 0]);
        assert_eq!(&f[38..42], &ip.octets());
        assert_eq!(arp_claimant(&f, ip), None);
    }

    #[test]
    fn arp_reply_from_holder_is_a_claim() {
        let ip = Ipv4Addr::new(10, 77, 0, 50);
        let mut f = gratuitous_arp(OTHER, ip);
        f[21] = 2; // turn it into a reply
        assert_eq!(arp_claimant(&f, ip), Some(OTHER));
        assert_eq!(arp_claimant(&f, Ipv4Addr::new(10, 77, 0, 51)), None);
        f[21] = 3; // RARP request: not ARP's business
        assert_eq!(arp_claimant(&f, ip), None);
    }

    #[test]
    fn arp_parser_survives_short_frames() {
        let ip = Ipv4Addr::new(10, 77, 0, 50);
        let f = gratuitous_arp(OTHER, ip);
        for len in 0..f.len() {
            let _ = arp_claimant(&f[..len], ip);
        }
    }

    #[test]
    fn solicited_node_and_multicast_mac() {
        let a: Ipv6Addr = "fd77::1234:5678".parse().expect("literal");
        let s = solicited_node(a);
        assert_eq!(s, "ff02::1:ff34:5678".parse::<Ipv6Addr>().expect("literal"));
        assert_eq!(ipv6_multicast_mac(s), [0x33, 0x33, 0xff, 0x34, 0x56, 0x78]);
    }

    #[test]
    fn checksum_of_known_packet_verifies_to_zero() {
        // A correct checksum makes the one's-complement sum over the whole
        // message (checksum included) come out as 0xffff, i.e. verify to 0.
        let target: Ipv6Addr = "fd77::50".parse().expect("literal");
        let f = dad_solicitation(MAC, target);
        let icmp = &f[ETH_HLEN + IPV6_HLEN..];
        let dst = solicited_node(target);
        assert_eq!(icmpv6_checksum(Ipv6Addr::UNSPECIFIED, dst, icmp), 0);
    }

    #[test]
    fn dad_solicitation_layout() {
        let target: Ipv6Addr = "fd77::50".parse().expect("literal");
        let f = dad_solicitation(MAC, target);
        assert_eq!(f.len(), 14 + 40 + 24);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x50]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ip = &f[14..];
        assert_eq!(ip[0], 0x60);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 24);
        assert_eq!(ip[6], 58);
        assert_eq!(ip[7], 255);
        assert_eq!(&ip[8..24], &[0; 16]);
        assert_eq!(&ip[24..40], &solicited_node(target).octets());
        assert_eq!(ip[40], 135);
        assert_eq!(&ip[48..64], &target.octets());
    }

    /// Wraps an ICMPv6 message into an Ethernet + IPv6 frame as the holder
    /// would send it.
    fn frame_with(icmp: &[u8], src_mac: Mac, hop_limit: u8) -> Vec<u8> {
        let mut f = Vec::new();
        ethernet_header(&mut f, [0x33, 0x33, 0, 0, 0, 1], src_mac, ETH_P_IPV6);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.push(58);
        f.push(hop_limit);
        f.extend_from_slice(&[0; 16]);
        f.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().expect("literal").octets());
        f.extend_from_slice(icmp);
        f
    }

    #[test]
    fn advertisement_layout_and_parse() {
        let target: Ipv6Addr = "fd77::50".parse().expect("literal");
        let na = neighbour_advertisement(target, MAC);
        assert_eq!(na[0], 136);
        assert_eq!(na[4], 0x20, "override only");
        assert_eq!(&na[8..24], &target.octets());
        assert_eq!(&na[24..26], &[2, 1]);
        assert_eq!(&na[26..32], &MAC);

        // The option names the owner even if the frame came from elsewhere.
        assert_eq!(na_claimant(&frame_with(&na, OTHER, 255), target), Some(MAC));
        // Wrong target, routed (hop limit < 255): not a claim.
        let other: Ipv6Addr = "fd77::51".parse().expect("literal");
        assert_eq!(na_claimant(&frame_with(&na, OTHER, 255), other), None);
        assert_eq!(na_claimant(&frame_with(&na, OTHER, 64), target), None);
        // Without the option the frame source is the claimant.
        assert_eq!(
            na_claimant(&frame_with(&na[..24], OTHER, 255), target),
            Some(OTHER)
        );
    }

    #[test]
    fn advertisement_parser_survives_truncation_and_bad_options() {
        let target: Ipv6Addr = "fd77::50".parse().expect("literal");
        let mut na = neighbour_advertisement(target, MAC);
        na[25] = 0; // zero-length option must not loop forever
        let f = frame_with(&na, OTHER, 255);
        assert_eq!(na_claimant(&f, target), Some(OTHER));
        for len in 0..f.len() {
            let _ = na_claimant(&f[..len], target);
        }
    }
}
