//! `kind = "dns"`: the pair's identity as a DNS record, for pairs in different subnets
//! (the seed's WAN case). Starting points the record at this node's address with a
//! TSIG-signed RFC 2136 update; monitoring checks the server answers with it.
//!
//! Stopping changes nothing: a record cannot point "nowhere", and the node taking over
//! repoints it. Clients follow within the record's TTL, so keep `ttl` short.

use std::net::IpAddr;
use std::time::Duration;

use understudy_config::{DnsResourceConfig, ResourceConfig};
use understudy_dnsupdate::{
    query_address_with_timeout, replace_address, AddressType, Tsig, TsigAlgorithm,
};

use crate::error::{Action, ResourceError};
use crate::{BoxFuture, Health, Resource};

#[derive(Debug)]
pub struct DnsResource {
    name: String,
    cfg: DnsResourceConfig,
    /// The address this node publishes when active.
    mine: IpAddr,
    start_timeout: Duration,
    monitor_timeout: Duration,
    monitor_interval: Duration,
}

impl DnsResource {
    pub fn new(
        cfg: &ResourceConfig,
        dns: &DnsResourceConfig,
        node_index: usize,
    ) -> Result<DnsResource, String> {
        let mine = *dns
            .addresses
            .get(node_index)
            .ok_or_else(|| format!("resource {}: no address for node #{node_index}", cfg.name))?;
        Ok(DnsResource {
            name: cfg.name.clone(),
            cfg: dns.clone(),
            mine,
            start_timeout: Duration::from_millis(cfg.start_timeout_ms),
            monitor_timeout: Duration::from_millis(cfg.monitor_timeout_ms),
            monitor_interval: Duration::from_millis(cfg.monitor_interval_ms),
        })
    }

    /// Read when used rather than at start-up, so a rotated secret is picked up.
    fn tsig(&self) -> Result<Tsig, ResourceError> {
        let algorithm = match self.cfg.tsig_algorithm.as_str() {
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            _ => TsigAlgorithm::HmacSha256,
        };
        Tsig::from_secret_file(
            self.cfg.tsig_key_name.clone(),
            algorithm,
            &self.cfg.tsig_secret_file,
        )
        .map_err(|e| ResourceError::other(&self.name, Action::Start, e))
    }
}

impl Resource for DnsResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "dns"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let tsig = self.tsig()?;
            replace_address(
                self.cfg.server,
                &self.cfg.zone,
                &self.cfg.record,
                self.cfg.ttl,
                self.mine,
                &tsig,
                self.start_timeout,
            )
            .await
            .map_err(|e| ResourceError::other(&self.name, Action::Start, e))?;
            tracing::info!(resource = %self.name, record = %self.cfg.record, address = %self.mine, "DNS record points here");
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async { Ok(()) })
    }

    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let rtype = AddressType::of(self.mine);
            let answer = query_address_with_timeout(
                self.cfg.server,
                &self.cfg.record,
                rtype,
                self.monitor_timeout,
            )
            .await
            .map_err(|e| ResourceError::other(&self.name, Action::Monitor, e))?;
            Ok(if answer == [self.mine] {
                Health::Running
            } else {
                Health::Failed(format!(
                    "{} answers {answer:?}, not {}",
                    self.cfg.record, self.mine
                ))
            })
        })
    }

    fn monitor_interval(&self) -> Duration {
        self.monitor_interval
    }
}
