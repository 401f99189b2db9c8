//! The netlink side: finding the interface and adding, listing and deleting
//! addresses on it through rtnetlink, so the crate needs no `ip` binary and
//! gets errno values instead of text to parse.
//!
//! Every call opens a fresh netlink socket. That costs little, keeps `Vip`
//! free of connection state, and means each operation acts on the network
//! namespace of the thread it runs on, like every other socket here.

use std::io;
use std::net::IpAddr;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::Handle;

use crate::packet::Mac;

/// What the crate needs to know about the interface.
pub(crate) struct Link {
    pub(crate) index: u32,
    /// The Ethernet address, if the interface is Ethernet (ARP and neighbour
    /// discovery frames are only built for Ethernet).
    pub(crate) mac: Option<Mac>,
}

/// The negative errno a netlink request failed with, if it did so.
pub(crate) fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

pub(crate) struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace. The
    /// connection task ends by itself once `self` (the only handle) is gone.
    pub(crate) fn connect() -> io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Looks the interface up by name; `Ok(None)` if there is none.
    pub(crate) async fn link(&self, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
        let mut links = self.handle.link().get().match_name(name).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mac = if msg.header.link_layer_type == LinkLayerType::Ether {
            msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(bytes) => <Mac>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
        } else {
            None
        };
        Ok(Some(Link {
            index: msg.header.index,
            mac,
        }))
    }

    /// The address messages for `address` on interface `index` (any prefix
    /// length). Usually zero or one.
    pub(crate) async fn addresses(
        &self,
        index: u32,
        address: IpAddr,
    ) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(address)
            .execute()
            .try_collect()
            .await
    }

    /// Adds `address/prefix_len` to interface `index`. IPv6 addresses get
    /// IFA_F_NODAD: duplicate address detection would keep a fresh address
    /// tentative (unusable, and unable to source our advertisement) for about
    /// a second after every failover; the conflict probe covers that risk
    /// before the address is taken.
    pub(crate) async fn add(
        &self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), rtnetlink::Error> {
        let mut req = self.handle.address().add(index, address, prefix_len);
        if address.is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await
    }

    pub(crate) async fn delete(&self, msg: AddressMessage) -> Result<(), rtnetlink::Error> {
        self.handle.address().del(msg).execute().await
    }
}
