//! `understudy`: the one binary. `understudy run` is the daemon; the other subcommands
//! set a pair up (`init`, `check`) or talk to the running daemon over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use understudy_daemon::control::{self, Reply, Request};
use understudy_daemon::report;

mod demo;
mod demo_service;

const DEFAULT_CONFIG: &str = "/etc/understudy/understudy.toml";

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "A high-availability pair for Linux servers"
)]
struct Cli {
    /// The pair's config file, the same on both nodes.
    #[arg(long, short, global = true, env = "UNDERSTUDY_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Use this control socket instead of the config's `pair.control_socket` (for two
    /// nodes on one machine, as in tests and the demo).
    #[arg(long, global = true, env = "UNDERSTUDY_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a commented config template and create the pair's CA and node certificates.
    Init {
        /// The pair's name.
        #[arg(long)]
        pair: String,
        /// A node, as NAME=CHANNEL_IP,MANAGEMENT_IP; give exactly two.
        #[arg(long = "node", num_args = 1, required = true)]
        nodes: Vec<String>,
        /// Where to write the CA and node certificates (default /etc/understudy/<pair>).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Overwrite an existing config and certificates.
        #[arg(long)]
        force: bool,
    },
    /// Validate the config file without starting anything.
    Check,
    /// Run the daemon for this node.
    Run {
        /// This node's name in the config (default: the hostname).
        #[arg(long)]
        node: Option<String>,
        /// Log format: text or json.
        #[arg(long, default_value = "text")]
        log_format: String,
        /// Use this state directory instead of the config's `pair.state_dir`.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Show the pair's state as seen by the local daemon.
    Status {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Move the active role to the other node, with no data loss.
    Switchover,
    /// Compare the passive's copy of the replicated sets with the active's, online, by
    /// block hashes, while applications run (on the active node). Exits 0 when they are
    /// identical, 3 when they differ; with --repair, 0 once the repair is done and 4 if it
    /// failed.
    Verify {
        /// One set (default: every set).
        set: Option<String>,
        /// Resync what differs afterwards.
        #[arg(long)]
        repair: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
    /// The lease watchdog the daemon starts for itself (see `understudy_daemon::watchdog`).
    #[command(hide = true)]
    Watchdog {
        #[arg(long)]
        node: String,
        #[arg(long)]
        lease_ms: u64,
    },
    /// A small key-value HTTP service (the demo's application; also used by the tests).
    #[command(hide = true)]
    DemoService {
        /// Address to listen on, e.g. 0.0.0.0:8080.
        #[arg(long)]
        listen: String,
        /// Where values are stored.
        #[arg(long)]
        dir: PathBuf,
        /// Name reported in answers (X-Node header, GET /).
        #[arg(long, default_value = "node")]
        node: String,
    },
    /// Run the demo: two nodes and a client in network namespaces on this machine, a
    /// switchover, a power failure and the takeover, no acknowledged write lost, the
    /// failed node resynced and switched back to. Needs root; removes all it made.
    Demo {
        /// Plain output, even on a terminal (NO_COLOR is respected too).
        #[arg(long)]
        no_color: bool,
    },
    /// Make this node active even though the automatic rules would not.
    Failover {
        /// Required: this overrides the safety rules (it is still refused while the peer is
        /// reachable and active).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("understudy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Init {
            pair,
            nodes,
            tls_dir,
            force,
        } => {
            init(&cli.config, &pair, &nodes, tls_dir.as_deref(), force).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Check => check(&cli.config).map(|()| ExitCode::SUCCESS),
        Cmd::Watchdog { node, lease_ms } => {
            init_logging("text")?;
            let cfg = load(&cli.config)?;
            let lease = std::time::Duration::from_millis(lease_ms);
            understudy_daemon::watchdog::serve(&cfg, &node, lease).map(|()| ExitCode::SUCCESS)
        }
        Cmd::DemoService { listen, dir, node } => {
            demo_service::serve(&listen, &dir, &node).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Demo { no_color } => demo::run(demo::Options { no_color }).map(|()| ExitCode::SUCCESS),
        Cmd::Run {
            node,
            log_format,
            state_dir,
        } => run(&cli.config, cli.socket, state_dir, node, &log_format).map(|()| ExitCode::SUCCESS),
        Cmd::Status { json } => status(&cli.config, cli.socket, json),
        Cmd::Verify {
            set,
            repair,
            json,
            timeout_s,
        } => verify(&cli.config, cli.socket, set, repair, json, timeout_s),
        Cmd::Switchover => command(
            &cli.config,
            cli.socket,
            Request::Switchover,
            "switchover started",
        ),
        Cmd::Failover { force } => {
            if !force {
                bail!(
                    "`understudy failover` needs --force: automatic failover is the daemon's job"
                );
            }
            command(
                &cli.config,
                cli.socket,
                Request::ForceFailover,
                "forced failover started",
            )
        }
    }
}

fn load(path: &Path) -> Result<understudy_config::Config> {
    understudy_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn init(
    path: &Path,
    pair: &str,
    nodes: &[String],
    tls_dir: Option<&Path>,
    force: bool,
) -> Result<()> {
    if nodes.len() != 2 {
        bail!("give exactly two --node NAME=CHANNEL_IP,MANAGEMENT_IP");
    }
    let mut parsed = Vec::new();
    for spec in nodes {
        let (name, addrs) = spec
            .split_once('=')
            .with_context(|| format!("--node {spec}: expected NAME=CHANNEL_IP,MANAGEMENT_IP"))?;
        let (channel, management) = addrs
            .split_once(',')
            .with_context(|| format!("--node {spec}: expected NAME=CHANNEL_IP,MANAGEMENT_IP"))?;
        parsed.push((
            name.to_string(),
            channel.to_string(),
            management.to_string(),
        ));
    }
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let mut text = understudy_config::template(
        pair,
        [&parsed[0].0, &parsed[1].0],
        [&parsed[0].1, &parsed[1].1],
        [&parsed[0].2, &parsed[1].2],
    );
    if let Some(dir) = tls_dir {
        // Turn the template's commented default into a setting.
        let commented = format!("# tls_dir = \"/etc/understudy/{pair}\"");
        if !text.contains(&commented) {
            bail!("the config template has no tls_dir line to set");
        }
        let value = serde_json::to_string(&dir.display().to_string())?; // a valid TOML basic string
        text = text.replacen(&commented, &format!("tls_dir = {value}"), 1);
    }
    // Validate before writing anything, so a typo leaves no half-made pair behind.
    let cfg = understudy_config::parse(&text, path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let material = understudy_tls::generate_pair(pair, &[&parsed[0].0, &parsed[1].0])?;
    understudy_tls::write_pair(&cfg.pair.tls_dir, &material, force)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!(
        "wrote the pair's CA and node certificates to {}",
        cfg.pair.tls_dir.display()
    );
    println!("copy both to the other node (ca.key need not go: it only signs new certificates),");
    println!(
        "add public_check targets, then run `understudy check` and `understudy run` on each node."
    );
    Ok(())
}

fn init_logging(log_format: &str) -> Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log_format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format {other}: expected text or json"),
    }
    Ok(())
}

fn check(path: &Path) -> Result<()> {
    let cfg = load(path)?;
    for warning in cfg.warnings() {
        println!("warning: {warning}");
    }
    println!(
        "{}: OK (pair {}, nodes {} and {}, {} resource(s))",
        path.display(),
        cfg.pair.name,
        cfg.nodes[0].name,
        cfg.nodes[1].name,
        cfg.resources.len()
    );
    Ok(())
}

fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        bail!("cannot read the hostname; pass --node");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn run(
    path: &Path,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    node: Option<String>,
    log_format: &str,
) -> Result<()> {
    init_logging(log_format)?;
    let mut cfg = load(path)?;
    if let Some(socket) = socket {
        cfg.pair.control_socket = socket;
    }
    if let Some(dir) = state_dir {
        cfg.pair.state_dir = dir;
    }
    let node = match node {
        Some(n) => n,
        None => hostname()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(understudy_daemon::run(cfg, &node))
}

fn ask(path: &Path, socket: Option<PathBuf>, request: &Request) -> Result<Reply> {
    let socket = match socket {
        Some(s) => s,
        None => load(path)?.pair.control_socket,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(control::request(&socket, request))
}

fn status(path: &Path, socket: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let reply = ask(path, socket, &Request::Status)?;
    let Some(status) = reply.status else {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "no status in the reply".into())
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", report::human(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn command(path: &Path, socket: Option<PathBuf>, request: Request, done: &str) -> Result<ExitCode> {
    let reply = ask(path, socket, &request)?;
    if reply.ok {
        println!("{done}; follow it with `understudy status`");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("refused: {}", reply.error.unwrap_or_default());
        Ok(ExitCode::from(2))
    }
}

/// Starts the verifies, then follows them in the status until each has a result (with
/// `repair`, until the repair the result names is done or failed).
fn verify(
    path: &Path,
    socket: Option<PathBuf>,
    set: Option<String>,
    repair: bool,
    json: bool,
    timeout_s: u64,
) -> Result<ExitCode> {
    let reply = ask(path, socket.clone(), &Request::Verify { set, repair })?;
    if !reply.ok {
        eprintln!("refused: {}", reply.error.unwrap_or_default());
        return Ok(ExitCode::from(2));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    // Per set: its outcome, and the repair's record once it ended (done or failed).
    let mut results = Vec::new();
    let mut last_line = String::new();
    for (name, id) in &reply.started {
        loop {
            let status = ask(path, socket.clone(), &Request::Status)?
                .status
                .context("no status in the reply")?;
            let r = status
                .replication
                .iter()
                .find(|r| &r.name == name)
                .with_context(|| format!("set {name} vanished from the status"))?;
            if let Some(v) = r.last_verify.as_ref().filter(|v| v.id == *id) {
                if !repair || v.differences.is_empty() {
                    results.push((name.clone(), v.clone(), None));
                    break;
                }
                if let Some(ended) = repair_ended(name, *id, v.repair_id, r.sync.as_ref())? {
                    results.push((name.clone(), v.clone(), Some(ended)));
                    break;
                }
            } else if let Some(p) = r
                .sync
                .as_ref()
                .filter(|p| p.id == *id && p.phase == "failed")
            {
                bail!(
                    "verify of {name} failed: {}; see the daemon's log",
                    p.error.as_deref().unwrap_or("no reason given")
                );
            }
            if !json {
                if let Some(p) = &r.sync {
                    let line = format!(
                        "{name}: {} {} {}/{} files, {}/{} MiB",
                        p.kind,
                        p.phase,
                        p.files_done,
                        p.files_total,
                        p.bytes_done >> 20,
                        p.bytes_total >> 20
                    );
                    if line != last_line {
                        eprintln!("{line}");
                        last_line = line;
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                if repair {
                    bail!("verify and repair of {name} did not finish within {timeout_s} s");
                }
                bail!("verify of {name} did not finish within {timeout_s} s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let differences: usize = results.iter().map(|(_, v, _)| v.differences.len()).sum();
    let failed_repairs: Vec<(&String, &report::SyncProgress)> = results
        .iter()
        .filter_map(|(name, _, ended)| ended.as_ref().map(|p| (name, p)))
        .filter(|(_, p)| p.phase == "failed")
        .collect();
    if json {
        let out: Vec<_> = results
            .iter()
            .map(|(name, v, ended)| match ended {
                Some(p) => serde_json::json!({"set": name, "verify": v, "repair": p}),
                None => serde_json::json!({"set": name, "verify": v}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (name, v, ended) in &results {
            println!(
                "{name}: {} differences ({} files, {} MiB compared in {:.1} s)",
                v.differences.len(),
                v.files_compared,
                v.bytes_compared >> 20,
                v.elapsed_ms as f64 / 1000.0
            );
            for (p, what) in &v.differences {
                println!("  {what}: {p}");
            }
            if ended.as_ref().is_some_and(|p| p.phase == "done") {
                println!("  repaired: the differing paths were resynced from this node");
            }
        }
    }
    for (name, p) in &failed_repairs {
        eprintln!(
            "understudy: the repair of {name} failed: {}; the differences remain (see the daemon's log)",
            p.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(if !failed_repairs.is_empty() {
        ExitCode::from(4)
    } else if differences == 0 || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Whether the repair a verify's outcome names has ended: its record when done or failed,
/// `None` while it runs. `repair_id` is `None` when the repair could not start, and the
/// verify's own record (`verify_id`) then says failed.
fn repair_ended(
    name: &str,
    verify_id: u64,
    repair_id: Option<u64>,
    sync: Option<&report::SyncProgress>,
) -> Result<Option<report::SyncProgress>> {
    let Some(p) = sync else {
        return Ok(None);
    };
    let ended = p.phase == "done" || p.phase == "failed";
    match repair_id {
        Some(rid) if p.id == rid => Ok(ended.then(|| p.clone())),
        // The status may pair the new outcome with the verify's record, read a moment
        // before the repair's replaced it: the next one shows the repair's.
        Some(rid) if p.id < rid => Ok(None),
        Some(rid) => bail!(
            "the repair of {name} (sync {rid}) was followed by sync {} before its end was seen; see the daemon's log",
            p.id
        ),
        None if p.id == verify_id && p.phase == "failed" => Ok(Some(p.clone())),
        None => Ok(None),
    }
}
