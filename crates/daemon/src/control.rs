//! The local control socket: root only, one JSON request and one JSON reply per line.
//! `understudy status`, `switchover` and `failover --force` use it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use understudy_core::{Command, Via};

use understudy_replication::Replicator;

use crate::net::{self, NetCtx};
use crate::report::StatusReport;
use crate::runtime::ToCore;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Switchover,
    ForceFailover,
    /// Compare the passive's copies with this active's; `set: None` means every set.
    Verify {
        set: Option<String>,
        repair: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub status: Option<StatusReport>,
    /// For verify: the sets and the ids of the verifies started.
    #[serde(default)]
    pub started: Vec<(String, u64)>,
}

/// Longest request line accepted: requests are tiny; anything longer is refused.
const REQUEST_MAX: usize = 4096;

pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    // A socket file left by a crashed daemon would make bind fail; a live daemon answers.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    to_core: mpsc::Sender<ToCore>,
    net: Arc<NetCtx>,
    peer_management: SocketAddr,
    replicator: Arc<Replicator>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Only root, or the user the daemon runs as, may steer the pair.
        let allowed = stream
            .peer_cred()
            .map(|c| c.uid() == 0 || c.uid() == unsafe { libc::geteuid() });
        if !matches!(allowed, Ok(true)) {
            warn!("refused a control connection from a non-root user");
            continue;
        }
        let to_core = to_core.clone();
        let net = net.clone();
        let replicator = replicator.clone();
        tokio::spawn(async move {
            if let Err(e) = session(stream, to_core, net, peer_management, replicator).await {
                warn!(error = %e, "control session failed");
            }
        });
    }
}

async fn session(
    stream: UnixStream,
    to_core: mpsc::Sender<ToCore>,
    net: Arc<NetCtx>,
    peer_management: SocketAddr,
    replicator: Arc<Replicator>,
) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(REQUEST_MAX as u64);
    tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Verify { set, repair }) => match replicator.verify(set.as_deref(), repair) {
            Ok(started) => Reply {
                ok: true,
                error: None,
                status: None,
                started,
            },
            Err(e) => failure(&e),
        },
        Ok(request) => execute(request, &to_core, &net, peer_management).await,
        Err(e) => failure(&format!("bad request: {e}")),
    };
    let mut text = serde_json::to_string(&reply)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await?;
    Ok(())
}

async fn execute(
    request: Request,
    to_core: &mpsc::Sender<ToCore>,
    net: &NetCtx,
    peer_management: SocketAddr,
) -> Reply {
    let command = match request {
        Request::Status => {
            let (reply, answer) = oneshot::channel();
            if to_core.send(ToCore::Status { reply }).await.is_err() {
                return failure("the daemon is stopping");
            }
            return match answer.await {
                Ok(status) => Reply {
                    ok: true,
                    error: None,
                    status: Some(status),
                    started: vec![],
                },
                Err(_) => failure("the daemon is stopping"),
            };
        }
        Request::Switchover => Command::Switchover,
        Request::Verify { .. } => return failure("verify is handled before the core"),
        Request::ForceFailover => {
            // Look at the peer right now, so a reachable active peer refuses the force.
            if let Some(status) = probe_now(net, peer_management).await {
                let _ = to_core
                    .send(ToCore::PeerStatus {
                        via: Via::Management,
                        status,
                    })
                    .await;
            }
            Command::ForceFailover
        }
    };
    let (reply, answer) = oneshot::channel();
    if to_core
        .send(ToCore::Command { command, reply })
        .await
        .is_err()
    {
        return failure("the daemon is stopping");
    }
    match answer.await {
        Ok(Ok(())) => Reply {
            ok: true,
            error: None,
            status: None,
            started: vec![],
        },
        Ok(Err(refusal)) => failure(&refusal),
        Err(_) => failure("the daemon is stopping"),
    }
}

async fn probe_now(
    net: &NetCtx,
    peer_management: SocketAddr,
) -> Option<understudy_core::NodeStatus> {
    let me = *net.status_rx.borrow();
    net::probe_peer(net, peer_management, me?).await
}

fn failure(text: &str) -> Reply {
    Reply {
        ok: false,
        error: Some(text.to_string()),
        status: None,
        started: vec![],
    }
}

/// The client side, for the CLI.
pub async fn request(socket: &Path, request: &Request) -> Result<Reply> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the daemon at {} (is `understudy run` running, and are you root?)",
            socket.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(rd).read_line(&mut line),
    )
    .await
    .context("the daemon did not answer within 10 s")??;
    serde_json::from_str(line.trim()).context("the daemon's reply is not valid JSON")
}
