//! Configuration of an Understudy pair: parse and validate the one TOML file
//! shared by both nodes.
//!
//! [`load`] reads a file and [`parse`] takes text; both return a [`Config`]
//! whose values are resolved (addresses as [`SocketAddr`](std::net::SocketAddr)
//! with their default ports, durations as `u64` milliseconds, defaults filled
//! in) and validated, or a [`ConfigError`] naming the file, line, column and
//! key of the first problem found. [`TEMPLATE`] and [`template`] give a fully
//! commented file to start from.
//!
//! The file looks like this (see [`TEMPLATE`] for every key and default):
//!
//! ```toml
//! [pair]
//! name = "web"
//!
//! [[node]]
//! name = "alpha"
//! channel = ["192.168.50.1:7400"]
//! management = "203.0.113.11"
//!
//! [[node]]
//! name = "beta"
//! channel = ["192.168.50.2:7400"]
//! management = "203.0.113.12"
//!
//! [public_check]
//! targets = ["203.0.113.1"]
//!
//! [[resource]]
//! name = "app"
//! kind = "exec"
//! start = "/usr/local/bin/app-start"
//! stop = "/usr/local/bin/app-stop"
//! ```

mod error;
mod model;
mod template;
mod validate;

use std::path::Path;

pub use error::ConfigError;
pub use model::{
    defaults, Config, DnsResourceConfig, ExecResourceConfig, FailureAction, HooksConfig,
    NodeConfig, OcfResourceConfig, PairConfig, PublicCheckConfig, ReplicateConfig, ReplicationMode,
    ResourceConfig, ResourceKind, SystemdResourceConfig, VipResourceConfig,
};
pub use template::{template, TEMPLATE};

/// Read and validate the configuration file at `path`.
///
/// Errors name `path` as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Validate configuration `text`; `source` is the file name used in errors
/// and recorded in [`Config::source`].
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    validate::parse(text, source)
}
