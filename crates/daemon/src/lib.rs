//! The Understudy daemon: a tokio runtime that drives the sans-IO `understudy-core`.
//!
//! It owns all IO: the mutual-TLS channel links, the management probe, the public-network
//! check, the resources, the persisted role state and the control socket. It decides
//! nothing itself: every role decision comes from the core.

pub mod control;
pub mod hooks;
pub mod net;
pub mod report;
pub mod runtime;
pub mod state;
pub mod watchdog;

pub use runtime::run;
