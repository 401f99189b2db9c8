//! `kind = "vip"`: the floating address. Starting probes whether another host already
//! answers for it (ARP probe or neighbour solicitation) and refuses with an alarm if one
//! does, since that is a split brain in the making; otherwise it adds the address through
//! netlink and announces it (gratuitous ARP / unsolicited neighbour advertisement).
//! Stopping removes it; monitoring checks it is still held.

use std::time::Duration;

use understudy_config::{ResourceConfig, VipResourceConfig};
use understudy_vip::Vip;

use crate::error::{Action, ResourceError};
use crate::{BoxFuture, Health, Resource};

#[derive(Clone)]
pub struct VipResource {
    name: String,
    vip: Vip,
    conflict_probe: Duration,
    monitor_interval: Duration,
}

impl std::fmt::Debug for VipResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VipResource({} {}/{} on {})",
            self.name,
            self.vip.address(),
            self.vip.prefix_len(),
            self.vip.interface()
        )
    }
}

impl VipResource {
    pub fn new(cfg: &ResourceConfig, vip: &VipResourceConfig) -> Result<VipResource, String> {
        let address = Vip::new(vip.address, vip.prefix_len, vip.interface.clone())
            .map_err(|e| format!("resource {}: {e}", cfg.name))?
            .with_announcements(
                vip.gratuitous_arp_count,
                Duration::from_millis(vip.gratuitous_arp_interval_ms),
            );
        Ok(VipResource {
            name: cfg.name.clone(),
            vip: address,
            conflict_probe: Duration::from_millis(vip.conflict_probe_ms),
            monitor_interval: Duration::from_millis(cfg.monitor_interval_ms),
        })
    }
}

impl Resource for VipResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "vip"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let held = self
                .vip
                .is_present()
                .await
                .map_err(|e| ResourceError::other(&self.name, Action::Start, e))?;
            // Re-announcing an address we already hold is fine; probing it would find us.
            if !held && !self.conflict_probe.is_zero() {
                let answer = self
                    .vip
                    .probe_conflict(self.conflict_probe)
                    .await
                    .map_err(|e| ResourceError::other(&self.name, Action::Start, e))?;
                if let Some(mac) = answer {
                    tracing::error!(
                        resource = %self.name,
                        address = %self.vip.address(),
                        holder = %mac,
                        "ALARM: address conflict: another host answers for the floating address; refusing to take it"
                    );
                    return Err(ResourceError::other(
                        &self.name,
                        Action::Start,
                        format!(
                            "address conflict: {} is already answered by {mac}; refusing to take it (a split brain in the making)",
                            self.vip.address()
                        ),
                    ));
                }
            }
            // The first announcement is out when this returns; the rest follow in the background.
            self.vip
                .add_and_announce()
                .await
                .map_err(|e| ResourceError::other(&self.name, Action::Start, e))?;
            tracing::info!(resource = %self.name, address = %self.vip.address(), interface = %self.vip.interface(), "floating address taken and announced");
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.vip
                .remove()
                .await
                .map_err(|e| ResourceError::other(&self.name, Action::Stop, e))?;
            tracing::info!(resource = %self.name, address = %self.vip.address(), "floating address released");
            Ok(())
        })
    }

    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let held = self
                .vip
                .is_present()
                .await
                .map_err(|e| ResourceError::other(&self.name, Action::Monitor, e))?;
            Ok(if held {
                Health::Running
            } else {
                Health::Stopped
            })
        })
    }

    fn monitor_interval(&self) -> Duration {
        self.monitor_interval
    }
}
