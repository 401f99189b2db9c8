//! `understudy demo`: the whole story of an Understudy pair, told on one machine in under a
//! minute, for someone deciding whether to trust it.
//!
//! It builds two nodes (alpha, beta) and a client in network namespaces, with a switch
//! namespace holding the bridges so the root namespace is never touched (the topology of
//! `understudy-testbed`'s `PairNet`). Both daemons are this same binary (`understudy run`);
//! the application is the hidden `demo-service` (a key-value HTTP service that fsyncs
//! before answering a PUT), its data in a directory replicated in `sync` mode, behind the
//! floating address 10.60.0.50. A client thread writes through that address all along and
//! remembers which writes were acknowledged. The demo then shows a planned switchover, a
//! power failure of the active with the takeover as a timeline, that no acknowledged write
//! was lost, the failed node rejoining and being resynced, and the switch back.
//!
//! Every number printed is measured: by the demo's own clock (client requests, ARP
//! answers) or read from the daemons' event logs (`understudy status --json`). Everything
//! the demo creates (namespaces, processes, mounts) is removed on every exit path,
//! including errors and Ctrl-C; the logs directory is kept.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use understudy_daemon::control::{self, Request};
use understudy_daemon::report::{self, EventReport, StatusReport};
use understudy_testbed::{spawn_in, tool_path, Netns, PairNet, Proc};

const NAMES: [&str; 2] = ["alpha", "beta"];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 50);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 100);
const PORT: u16 = 8080;
const FAILOVER_TIMEOUT_MS: u64 = 1000;
/// The set's name in the config and the status.
const SET: &str = "kv";

/// How often the client writes, and how long one request may take. Short, so a request to
/// a dead node fails fast and the next one can find the new active.
const PUT_INTERVAL: Duration = Duration::from_millis(20);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Upper bound on the client's life, whatever happens to the demo.
const CLIENT_MAX: Duration = Duration::from_secs(300);
/// Upper bound on reading every acknowledged key back.
const READ_BACK_MAX: Duration = Duration::from_secs(60);
/// Upper bound on how long the ARP watcher runs after it is started.
const ARP_WATCH_MAX: Duration = Duration::from_secs(30);

pub struct Options {
    pub no_color: bool,
}

/// Set by SIGINT, SIGTERM or SIGHUP; every wait in the demo checks it, so Ctrl-C unwinds
/// through the ordinary error path and the cleanup runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // sigaction struct is fully initialised (zeroed, then the fields we use).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "cannot install the handler for signal {sig}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Sleeps, but wakes early (with an error) when interrupted.
fn pause(d: Duration) -> Result<()> {
    let deadline = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Polls `f` every `poll` until it returns `Some`, for at most `timeout`; the error names
/// what was awaited. Interruptible.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if let Some(v) = f()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "timed out after {} s waiting for {what}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked client thread leaves its samples usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Output

/// ANSI styles, or nothing when stdout is not a terminal, NO_COLOR is set, or --no-color.
#[derive(Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn detect(no_color: bool) -> Style {
        let env_off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && !env_off && std::io::stdout().is_terminal(),
        }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    fn green(&self, s: &str) -> String {
        self.paint("1;32", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn cyan(&self, s: &str) -> String {
        self.paint("36", s)
    }
    fn red(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
}

/// "1.234 s" for durations the reader compares with the 1 s failover timeout.
fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Entry point

pub fn run(opts: Options) -> Result<()> {
    preflight()?;
    let style = Style::detect(opts.no_color);
    install_signal_handlers()?;
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let dir = std::env::temp_dir().join(format!(
        "understudy-demo-{}-{}",
        unix_ms(SystemTime::now()) / 1000,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started = Instant::now();
    let result = match Demo::new(style, exe, dir.clone()) {
        Ok(mut demo) => {
            let r = demo.story();
            match &r {
                // The daemons' own errors are usually the explanation; show them before
                // the cleanup adds its own (the watchdog fences a killed active).
                Err(_) => demo.print_daemon_errors(),
                Ok(()) => demo.stop_daemons(),
            }
            println!();
            println!("{}", style.bold("== Cleaning up"));
            drop(demo);
            r
        }
        Err(e) => Err(e),
    };
    // Processes are gone by now; a capture mount left in the root mount namespace by some
    // other path would otherwise outlive the demo.
    unmount_under(&dir);
    let leftovers = leftover_namespaces();
    if !leftovers.is_empty() {
        eprintln!(
            "{}",
            style.red(&format!(
                "   namespaces still present: {} (remove with `ip netns del NAME`)",
                leftovers.join(", ")
            ))
        );
    }
    println!(
        "   namespaces, processes and mounts removed; logs kept in {}",
        style.bold(&dir.display().to_string())
    );
    match result {
        Ok(()) => {
            println!(
                "{}",
                style.green(&format!(
                    "== The demo passed in {:.0} s.",
                    started.elapsed().as_secs_f64()
                ))
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("{}", style.red("== The demo FAILED"));
            Err(e.context(format!(
                "the demo failed; the daemons' logs are in {}",
                dir.display()
            )))
        }
    }
}

/// What the demo needs from the machine, each missing piece named with its fix.
fn preflight() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "`understudy demo` must run as root (it creates network namespaces, moves an \
             address and mounts a FUSE filesystem); you are uid {euid}: try `sudo understudy demo`"
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if tool_path(tool).is_none() {
            bail!(
                "`understudy demo` needs `{tool}`: apt-get install {package} \
                 (./scripts/setup.sh installs everything the demo needs)"
            );
        }
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "`understudy demo` needs /dev/fuse (the replicated directory is a FUSE capture \
             filesystem on the active): modprobe fuse, or give the container the device"
        );
    }
    Ok(())
}

/// Namespaces of this process that survived the cleanup (there should be none).
fn leftover_namespaces() -> Vec<String> {
    let mine = understudy_testbed::ns_prefix();
    understudy_testbed::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&mine))
        .collect()
}

/// Lazily unmounts anything mounted under `dir` in this mount namespace. The daemons run
/// under `ip netns exec`, which gives each a private mount namespace that dies with its
/// processes, so normally there is nothing to do.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a NUL-terminated path we own.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

// ---------------------------------------------------------------------------------------
// The pair

/// Everything the demo runs. Field order is drop order: the client threads leave the
/// namespaces first, then the daemons are killed, then the namespaces are deleted (which
/// also kills anything left inside them).
struct Demo {
    client: Option<Client>,
    arp: Option<ArpWatch>,
    procs: [Option<Proc>; 2],
    net: PairNet,
    rt: tokio::runtime::Runtime,
    /// When the demo started: the origin of the times in its own logs.
    t0: Instant,
    style: Style,
    exe: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

impl Demo {
    fn new(style: Style, exe: PathBuf, dir: PathBuf) -> Result<Demo> {
        let s = style;
        println!("{}", s.bold("== Understudy demo: a pair on one machine"));
        println!(
            "   alpha, beta and a client in network namespaces, a switch namespace for the bridges"
        );
        println!("   logs: {}", s.dim(&dir.display().to_string()));
        let net = PairNet::new(1).context(
            "cannot build the demo's network namespaces (are network namespaces allowed here?)",
        )?;
        let config = dir.join("understudy.toml");
        std::fs::write(&config, config_text(&dir, &exe)?)
            .with_context(|| format!("cannot write {}", config.display()))?;
        // The certificates `understudy init` would make; the demo keeps its own config.
        let material = understudy_tls::generate_pair("demo", &NAMES)
            .context("generating the pair's certificates")?;
        understudy_tls::write_pair(&dir.join("tls"), &material, true)
            .context("writing the pair's certificates")?;
        // The same validation `understudy check` does, so a bad config fails here and not
        // in a daemon's log. Its one warning (a single channel link) is the demo's choice,
        // as in the script and the tests, so it is not printed.
        understudy_config::load(&config)
            .map_err(|e| anyhow!("{e}"))
            .context("the demo's own config is invalid")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the control-socket client")?;
        Ok(Demo {
            t0: Instant::now(),
            client: None,
            arp: None,
            procs: [None, None],
            net,
            rt,
            style,
            exe,
            dir,
            config,
        })
    }

    /// Appends a milestone to demo.log in the logs directory, to line up with the
    /// daemons' logs and client.log after a failure.
    fn mark(&self, what: &str) {
        let line = format!(
            "{:.3} {what} (unix ms {})\n",
            self.t0.elapsed().as_secs_f64(),
            unix_ms(SystemTime::now())
        );
        let path = self.dir.join("demo.log");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }

    /// "k12 (acknowledged by alpha at +3.456 s)", times as in demo.log and client.log.
    fn describe_put(&self, p: &Put) -> String {
        format!(
            "k{} (acknowledged by {} at +{:.3} s)",
            p.n,
            p.acked_by.as_deref().unwrap_or("?"),
            p.done.saturating_duration_since(self.t0).as_secs_f64()
        )
    }

    /// The last ERROR lines of each daemon's log, on stderr.
    fn print_daemon_errors(&self) {
        for name in NAMES {
            let path = self.dir.join(format!("{name}.log"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let errors: Vec<String> = text
                .lines()
                .map(understudy_testbed::strip_ansi)
                .filter(|l| l.contains(" ERROR "))
                .collect();
            if errors.is_empty() {
                continue;
            }
            eprintln!("   last errors in {}:", path.display());
            for l in &errors[errors.len().saturating_sub(3)..] {
                eprintln!("   {}", self.style.red(l));
            }
        }
    }

    /// Stops both daemons the way an operator would (SIGTERM: the active stops its
    /// resources; the passive, stopping too, takes nothing over), so their logs end
    /// cleanly. The cleanup kills whatever does not stop in time.
    fn stop_daemons(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            // SAFETY: kill(2) on a daemon this demo spawned (its pid is its group's).
            unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGTERM) };
        }
        for p in self.procs.iter_mut().flatten() {
            let _ = p.wait_timeout(Duration::from_secs(10));
        }
    }

    /// The paths in node i's quarantine manifests (`MANIFEST.jsonl`, one JSON object a
    /// line, as the status warning points the operator to).
    fn quarantined(&self, i: usize) -> Vec<String> {
        let base = self
            .dir
            .join(format!("state-{}/sets/{SET}/quarantine", NAMES[i]));
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let text =
                std::fs::read_to_string(entry.path().join("MANIFEST.jsonl")).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get("path")?.as_str().map(str::to_string)
            }));
        }
        out
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.sock", NAMES[i]))
    }

    fn start_node(&mut self, i: usize) -> Result<()> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(self.socket(i))
            .args(["run", "--node", NAMES[i], "--state-dir"])
            .arg(self.dir.join(format!("state-{}", NAMES[i])))
            // The service's start command names its node and pid file with it.
            .env("UNDERSTUDY_NODE", NAMES[i]);
        let log = self.dir.join(format!("{}.log", NAMES[i]));
        let proc = spawn_in(self.net.node(i), cmd, &log)
            .with_context(|| format!("starting the daemon of {}", NAMES[i]))?;
        self.procs[i] = Some(proc);
        Ok(())
    }

    fn request(&self, i: usize, req: &Request) -> Result<control::Reply> {
        self.rt
            .block_on(control::request(&self.socket(i), req))
            .with_context(|| format!("asking {}'s daemon", NAMES[i]))
    }

    fn status(&self, i: usize) -> Result<StatusReport> {
        let reply = self.request(i, &Request::Status)?;
        reply.status.ok_or_else(|| {
            anyhow!(
                "{}'s daemon sent no status: {}",
                NAMES[i],
                reply.error.unwrap_or_default()
            )
        })
    }

    /// The status, or None while the daemon is not answering (starting, or dead).
    fn try_status(&self, i: usize) -> Option<StatusReport> {
        self.status(i).ok()
    }

    fn client(&self) -> Result<&Client> {
        let c = self.client.as_ref().context("the client is not running")?;
        if c.finished() {
            bail!("the client thread stopped unexpectedly");
        }
        Ok(c)
    }

    fn wait_role(&self, i: usize, role: &str, timeout: Duration) -> Result<Instant> {
        wait_for(
            &format!("{} to be {role}", NAMES[i]),
            timeout,
            Duration::from_millis(10),
            || {
                Ok(self
                    .try_status(i)
                    .filter(|s| s.role == role)
                    .map(|_| Instant::now()))
            },
        )
    }

    /// Waits until the client's writes are acknowledged by `node` (a write sent after
    /// `since`); returns that write.
    fn wait_served_by(&self, node: usize, since: Instant, timeout: Duration) -> Result<Put> {
        wait_for(
            &format!("the client to be served by {}", NAMES[node]),
            timeout,
            Duration::from_millis(10),
            || Ok(self.client()?.first_ack_after(since, NAMES[node])),
        )
    }

    /// A node's power cut: every process in it dies at once and its cables are pulled.
    fn power_off(&mut self, i: usize) -> Result<()> {
        // Cables first, so nothing the node's dying processes say gets out.
        self.net.cut_public(i)?;
        self.net.cut_all_channels(i)?;
        for pid in self.net.node(i).pids() {
            if pid > 1 && pid <= i32::MAX as u32 && pid != std::process::id() {
                // SAFETY: kill(2) on processes inside a namespace this demo created.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if let Some(mut p) = self.procs[i].take() {
            p.kill9(); // reaps the daemon
        }
        Ok(())
    }

    /// Power back: a reboot forgets the floating address; cables in; the daemon starts
    /// (always as passive).
    fn power_on(&mut self, i: usize) -> Result<()> {
        // The namespace outlived the "machine"; its kernel would not have.
        let _ = self
            .net
            .node(i)
            .ip(&["addr", "del", &format!("{VIP}/24"), "dev", "pub"]);
        self.net.heal_public(i)?;
        self.net.heal_all_channels(i)?;
        self.start_node(i)
    }

    fn node_mac(&self, i: usize) -> Result<[u8; 6]> {
        let out = self.net.node(i).ip(&["-j", "link", "show", "dev", "pub"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j link` output")?;
        let text = v
            .get(0)
            .and_then(|l| l.get("address"))
            .and_then(|a| a.as_str())
            .with_context(|| format!("no MAC address for pub in {}", NAMES[i]))?;
        parse_mac(text).with_context(|| format!("bad MAC address {text}"))
    }

    /// The MAC the client's neighbour table holds for the floating address.
    fn client_neighbour(&self) -> Option<String> {
        let out = self
            .net
            .client()
            .ip(&["neigh", "show", &VIP.to_string()])
            .ok()?;
        let mut words = out.split_whitespace();
        words.by_ref().find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// The active's index once the pair has settled: one active serving, one passive
    /// connected to it, both reaching the public network, the set replicating.
    fn settled(&self) -> Result<Option<usize>> {
        for (i, p) in self.procs.iter().enumerate() {
            if p.as_ref().is_some_and(|p| p.group_members().is_empty()) {
                bail!(
                    "{}'s daemon exited at start-up; see {}",
                    NAMES[i],
                    self.dir.join(format!("{}.log", NAMES[i])).display()
                );
            }
        }
        let (Some(a), Some(b)) = (self.try_status(0), self.try_status(1)) else {
            return Ok(None);
        };
        let act = match (a.role.as_str(), b.role.as_str()) {
            ("active", "passive") if b.peer.connected => 0,
            ("passive", "active") if a.peer.connected => 1,
            _ => return Ok(None),
        };
        let st = if act == 0 { &a } else { &b };
        let ready = a.public_ok
            && b.public_ok
            && st.resources.iter().all(|r| r.state == "running")
            && self.set_report(st)?.state == "in_sync";
        Ok(ready.then_some(act))
    }

    fn set_report(&self, s: &StatusReport) -> Result<report::ReplicationReport> {
        s.replication
            .iter()
            .find(|r| r.name == SET)
            .cloned()
            .with_context(|| format!("{}'s status has no replicated set {SET}", s.node))
    }

    // -----------------------------------------------------------------------------------
    // The story

    fn story(&mut self) -> Result<()> {
        let first = self.start_pair()?;
        let second = 1 - first;
        self.start_client(first, second)?;
        self.planned_switchover(first, second)?;
        // Some writes on the new active, replicated to the first node, before the failure.
        pause(Duration::from_millis(1500))?;
        let failure = self.power_failure(second, first)?;
        let outage = self.takeover(&failure)?;
        self.check_after_failover(&failure)?;
        self.power_back(&failure)?;
        let stats = self.switch_back(&failure)?;

        println!();
        println!(
            "{}",
            self.style.green(&format!(
                "== 9. Summary: 2 planned switchovers and 1 power failure; the client was served \
                 again {} after the failure; {} writes sent, {} acknowledged, 0 lost",
                secs(outage),
                stats.sent,
                stats.acked.len()
            ))
        );
        Ok(())
    }

    fn heading(&self, text: &str) {
        println!();
        println!("{}", self.style.bold(&format!("== {text}")));
    }

    /// Step 1: both daemons start and elect an active. Returns the active.
    fn start_pair(&mut self) -> Result<usize> {
        let s = self.style;
        self.heading("1. Starting alpha and beta");
        println!(
            "   each runs `understudy run` (this binary) in its namespace; the pair elects an active"
        );
        let t0 = Instant::now();
        self.mark("starting alpha and beta");
        self.start_node(0)?;
        self.start_node(1)?;
        let first = wait_for(
            "the pair to settle (one active, one passive, connected, replicating)",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || self.settled(),
        )?;
        self.mark(&format!("settled: {} active", NAMES[first]));
        let st = self.status(first)?;
        println!(
            "   {} is {} ({}), {} is {} — settled in {}",
            s.bold(NAMES[first]),
            s.green("ACTIVE"),
            st.reason.as_deref().unwrap_or("?"),
            NAMES[1 - first],
            s.cyan("passive"),
            secs(t0.elapsed())
        );
        println!("   `understudy status` on {}:", NAMES[first]);
        for line in report::human(&st).lines() {
            if line.starts_with("recent events") {
                break;
            }
            println!("   {}", s.dim(&format!("| {line}")));
        }
        Ok(first)
    }

    /// Step 2: the client starts writing; shows its first acknowledged writes.
    fn start_client(&mut self, active: usize, passive: usize) -> Result<()> {
        self.heading("2. The client writes through the floating address 10.60.0.50");
        println!(
            "   a client in its own namespace sends PUT /k1, /k2, ... every {} ms ({} ms timeout);",
            PUT_INTERVAL.as_millis(),
            IO_TIMEOUT.as_millis()
        );
        println!(
            "   the service fsyncs each value before answering, and in sync mode that fsync returns"
        );
        println!("   only once the passive has it on disk: an acknowledged write is on both nodes");
        let t_writes = Instant::now();
        self.client = Some(Client::start(
            self.net.client(),
            self.dir.join("client.log"),
            self.t0,
        )?);
        let n = wait_for(
            "the client's first 50 acknowledged writes",
            Duration::from_secs(15),
            Duration::from_millis(20),
            || {
                let n = self.client()?.acked_count();
                Ok((n >= 50).then_some(n))
            },
        )?;
        let lat = self.client()?.median_ack_latency().unwrap_or_default();
        println!(
            "   {n} writes acknowledged by {} in {} (median {:.1} ms each)",
            NAMES[active],
            secs(t_writes.elapsed()),
            lat.as_secs_f64() * 1000.0
        );
        let r = self.set_report(&self.status(active)?)?;
        println!(
            "   replication of {SET}: {}, sent seq {}, acked by {} up to seq {}, queue {} ops",
            r.state, r.sent_seq, NAMES[passive], r.acked_seq, r.queue_ops
        );
        Ok(())
    }

    /// `understudy switchover` on `from`: waits until `to` is active and serves the client,
    /// and checks that `from` drained its replication queue to `to` first.
    fn switchover(&self, from: usize, to: usize) -> Result<()> {
        let s = self.style;
        let t_req = Instant::now();
        self.mark(&format!("switchover requested on {}", NAMES[from]));
        let reply = self.request(from, &Request::Switchover)?;
        if !reply.ok {
            bail!(
                "the switchover from {} was refused: {}",
                NAMES[from],
                reply.error.unwrap_or_default()
            );
        }
        let t_active = self.wait_role(to, "active", Duration::from_secs(15))?;
        self.mark(&format!("{} seen active", NAMES[to]));
        let served = self.wait_served_by(to, t_req, Duration::from_secs(10))?;
        // The old active stops its applications, then drains the queue to the peer and
        // logs whether the peer confirmed all of it.
        let drain = self
            .status(from)?
            .events
            .iter()
            .rev()
            .filter_map(|e| e.text.as_deref())
            .find(|t| t.starts_with(&format!("set {SET}:")) && t.contains("drain"))
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{} logged no drain notice for set {SET} during the switchover",
                    NAMES[from]
                )
            })?;
        if !drain.contains("confirmed by the peer") || drain.contains("NOT drained") {
            bail!("the switchover's drain was not confirmed: {drain}");
        }
        let failed = self.client()?.failed_between(t_req, served.done);
        println!(
            "   {} is active {} after the request",
            s.bold(NAMES[to]),
            s.green(&secs(t_active - t_req))
        );
        println!(
            "   the drain was confirmed ({}'s event log): {}",
            NAMES[from],
            s.cyan(&drain)
        );
        println!(
            "   the client is served by {} {} after the request (PUT /k{}); writes not \
             acknowledged meanwhile: {failed} (refused or timed out, so nothing was promised \
             for them)",
            NAMES[to],
            secs(served.done - t_req),
            served.n
        );
        Ok(())
    }

    /// Step 3.
    fn planned_switchover(&self, from: usize, to: usize) -> Result<()> {
        self.heading(&format!(
            "3. Planned switchover: `understudy switchover` moves the role to {}",
            NAMES[to]
        ));
        self.switchover(from, to)
    }

    /// Step 4: the active loses power. Returns what the later steps measure against.
    fn power_failure(&mut self, victim: usize, survivor: usize) -> Result<Failure> {
        self.heading(&format!(
            "4. Power failure of the active ({}): kill -9 every process on it, pull its cables",
            NAMES[victim]
        ));
        // Resyncs the victim's copy has completed so far (the count persists across
        // restarts), to recognise the one that follows its return.
        let resyncs_before = self.set_report(&self.status(victim)?)?.resyncs;
        let survivor_mac = self.node_mac(survivor)?;
        let victim_mac = self.node_mac(victim)?;
        self.arp = Some(ArpWatch::start(self.net.client())?);
        let acked_before = self.client()?.acked_count();
        self.mark(&format!("power failure of {}", NAMES[victim]));
        let at = Instant::now();
        let at_wall = SystemTime::now();
        self.power_off(victim)?;
        // Pulling the cables and killing take a few milliseconds; until the cables are out
        // the victim's kernel (not its daemon) may still answer ARP.
        let dark = Instant::now();
        self.mark(&format!("{} killed and unplugged", NAMES[victim]));
        println!(
            "   {} is dark (failover_timeout {} ms); the client keeps writing",
            NAMES[victim], FAILOVER_TIMEOUT_MS
        );
        Ok(Failure {
            victim,
            survivor,
            at,
            at_wall,
            dark,
            acked_before,
            resyncs_before,
            survivor_mac,
            victim_mac,
        })
    }

    /// Step 5: the takeover as a timeline from the failure. Returns the client's outage.
    fn takeover(&mut self, f: &Failure) -> Result<Duration> {
        let s = self.style;
        let (victim, survivor) = (NAMES[f.victim], NAMES[f.survivor]);
        self.wait_role(f.survivor, "active", Duration::from_secs(15))?;
        self.mark(&format!("{survivor} seen active"));
        let served = self.wait_served_by(f.survivor, f.at, Duration::from_secs(10))?;
        let arp_seen = wait_for(
            &format!("{survivor} to answer ARP for the floating address"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let arp = self
                    .arp
                    .as_ref()
                    .context("the ARP watcher is not running")?;
                Ok(arp.first_answer_after(f.at, &f.survivor_mac))
            },
        )?;
        let victim_answered = self
            .arp
            .take()
            .and_then(|a| a.first_answer_after(f.dark, &f.victim_mac));
        if let Some(t) = victim_answered {
            bail!(
                "{victim} answered ARP for the floating address {} after its cables were pulled",
                ms(t - f.dark)
            );
        }
        let st = self.status(f.survivor)?;
        self.heading(&format!(
            "5. The takeover by {survivor}, in time since the power failure"
        ));
        // The event log's wall-clock stamp places the decision against the demo's clock;
        // its monotonic stamps measure the intervals after it exactly.
        let fail_ms = unix_ms(f.at_wall);
        let (decided, promoted) = takeover_events(&st.events, fail_ms).with_context(|| {
            format!("{survivor}'s event log has no failover after the power failure")
        })?;
        let decided_rel = decided.at_unix_ms as i64 - fail_ms as i64;
        let since_decision = |e: &EventReport| e.at_mono_ms.saturating_sub(decided.at_mono_ms);
        let log_src = format!("{survivor}'s event log");
        let mut rows: Vec<(i64, String, String)> = vec![
            (0, format!("power failure of {victim}"), "demo".into()),
            (
                decided_rel,
                format!(
                    "{survivor}: failover decided ({} -> {}, epoch {}): the channel silent for \
                     failover_timeout since {victim}'s last heartbeat, its management address \
                     unanswered",
                    decided.from.as_deref().unwrap_or("?"),
                    decided.to.as_deref().unwrap_or("?"),
                    decided.epoch.unwrap_or(0),
                ),
                log_src.clone(),
            ),
            (
                decided_rel + since_decision(&promoted) as i64,
                format!(
                    "{survivor}: promoted, role active: data mounted, address added, service \
                     started ({} after the decision)",
                    ms(Duration::from_millis(since_decision(&promoted)))
                ),
                log_src.clone(),
            ),
            (
                (arp_seen - f.at).as_millis() as i64,
                format!(
                    "10.60.0.50 answers ARP from {survivor}'s pub ({})",
                    mac_text(&f.survivor_mac)
                ),
                "client ARP".into(),
            ),
            (
                (served.done - f.at).as_millis() as i64,
                format!(
                    "service up: first acknowledged write after the failure (PUT /k{}, served \
                     by {survivor})",
                    served.n
                ),
                "client".into(),
            ),
        ];
        // Anything else the survivor logged while promoting (replication notices).
        for e in st.events.iter().filter(|e| {
            e.kind != "role-change"
                && e.at_mono_ms >= decided.at_mono_ms
                && e.at_mono_ms <= promoted.at_mono_ms
        }) {
            rows.push((
                decided_rel + since_decision(e) as i64,
                format!("{survivor}: {}", e.text.as_deref().unwrap_or(&e.kind)),
                log_src.clone(),
            ));
        }
        rows.sort_by_key(|r| r.0);
        for (t, what, src) in rows {
            println!(
                "   {}  {what}  {}",
                s.bold(&format!("{:>8}", format!("+{t} ms"))),
                s.dim(&format!("[{src}]"))
            );
        }
        let outage = served.done - f.at;
        println!(
            "   the client was served again {} after the power failure (it retries every {} ms, \
             giving up on a connection after {} ms)",
            s.green(&secs(outage)),
            PUT_INTERVAL.as_millis(),
            CONNECT_TIMEOUT.as_millis()
        );
        if !self.net.client().can_ping(std::net::IpAddr::V4(VIP)) {
            bail!("10.60.0.50 does not answer ping from the client after the takeover");
        }
        let neigh = self.client_neighbour().unwrap_or_else(|| "none".into());
        let whose = if neigh == mac_text(&f.survivor_mac) {
            format!("{survivor}'s pub")
        } else {
            "not yet updated".to_string()
        };
        println!(
            "   ping 10.60.0.50 from the client: answered; its neighbour table: 10.60.0.50 at \
             {neigh} ({whose})"
        );
        Ok(outage)
    }

    /// Step 6: every acknowledged write is there on the survivor.
    fn check_after_failover(&self, f: &Failure) -> Result<()> {
        self.heading("6. No acknowledged write lost: read every one back through 10.60.0.50");
        let check = self.read_back(&self.client()?.acked())?;
        println!(
            "   {} ({} of them acknowledged before the power failure; read from {})",
            check.summary(&self.style),
            f.acked_before,
            check.served_by.join(", ")
        );
        check.ensure()
    }

    /// Step 7: the failed node comes back, rejoins as passive and is resynced.
    fn power_back(&mut self, f: &Failure) -> Result<()> {
        let s = self.style;
        let (victim, survivor) = (NAMES[f.victim], NAMES[f.survivor]);
        self.heading(&format!(
            "7. Power back on {victim}: it rejoins as passive and is resynchronised"
        ));
        let t_on = Instant::now();
        self.mark(&format!("power back on {victim}"));
        self.power_on(f.victim)?;
        self.wait_role(f.victim, "passive", Duration::from_secs(20))?;
        let (joined, active_set) = self.wait_rejoined(f)?;
        self.mark(&format!("{victim} seen passive, resynced, in sync"));
        let pr = self.set_report(&joined)?;
        println!(
            "   {victim} is {} again (connected, eligible) and its copy of {SET} is {} {} after \
             power-on",
            s.cyan(&joined.role),
            s.green(&pr.state),
            secs(t_on.elapsed())
        );
        if let Some(p) = &active_set.sync {
            println!(
                "   resync by {survivor} ({}): {} entries compared, {}/{} files copied or \
                 patched, {} bytes sent, {} ms",
                p.scope, p.entries, p.files_done, p.files_total, p.bytes_sent, p.elapsed_ms
            );
        }
        for (name, st) in [(victim, &joined), (survivor, &self.status(f.survivor)?)] {
            let note = st
                .events
                .iter()
                .rev()
                .filter_map(|e| e.text.as_deref())
                .find(|t| t.contains("resync") && t.contains("complete"));
            if let Some(note) = note {
                println!("   {name}'s event log: {}", s.cyan(note));
            }
        }
        println!(
            "   {survivor} streams to it again: set {SET} {}, sent seq {}, acked up to seq {}",
            active_set.state, active_set.sent_seq, active_set.acked_seq
        );
        if pr.warnings.is_empty() {
            println!(
                "   no warnings: none of {victim}'s files had changes the active lacked, so \
                 nothing needed preserving in its quarantine"
            );
            return Ok(());
        }
        println!(
            "   {victim} had changes {survivor} never got; the active's copy wins, and they are \
             kept for the operator:"
        );
        for w in &pr.warnings {
            println!("   {}", s.yellow(&format!("WARNING: {w}")));
        }
        self.print_quarantine(f)
    }

    /// Waits until the victim is back as an eligible passive, connected, with its copy
    /// resynced and in sync. Returns its status and the active's report of the set.
    fn wait_rejoined(&self, f: &Failure) -> Result<(StatusReport, report::ReplicationReport)> {
        let (victim, survivor) = (f.victim, f.survivor);
        let mut last_seen = String::from("no status from either node");
        wait_for(
            &format!(
                "{}'s copy of {SET} to be resynced and in sync",
                NAMES[victim]
            ),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let (Some(p), Some(a)) = (self.try_status(victim), self.try_status(survivor))
                else {
                    return Ok(None);
                };
                let (pr, ar) = (self.set_report(&p)?, self.set_report(&a)?);
                last_seen = format!(
                    "{}: {} eligible {} public {} set {} {} sync {:?} resyncs {}; {}: {} peer \
                     connected {} set {} {} sync {:?}",
                    NAMES[victim],
                    p.role,
                    p.eligible,
                    p.public_ok,
                    pr.role,
                    pr.state,
                    pr.sync.as_ref().map(|x| (&x.kind, &x.phase)),
                    pr.resyncs,
                    NAMES[survivor],
                    a.role,
                    a.peer.connected,
                    ar.role,
                    ar.state,
                    ar.sync.as_ref().map(|x| (&x.kind, &x.phase)),
                );
                // The passive's side of a resync: its status shows a sync of kind resync,
                // and its count of completed resyncs goes up when its copy equals the
                // active's (its phase stays "applying"). The active's side (the engine)
                // reports its phase as done.
                let passive_done = pr.sync.as_ref().is_some_and(|x| x.kind == "resync")
                    && pr.resyncs > f.resyncs_before;
                let active_done = ar
                    .sync
                    .as_ref()
                    .is_some_and(|x| x.kind == "resync" && x.phase == "done");
                // Rejoined: the active hears it over the channel as an eligible passive
                // that reaches the public network (what a switchover back requires).
                let rejoined = p.role == "passive"
                    && p.eligible
                    && p.public_ok
                    && a.peer.connected
                    && a.peer.role.as_deref() == Some("passive")
                    && a.peer.public_ok == Some(true);
                let in_sync = pr.state == "in_sync" && ar.state == "in_sync";
                Ok((rejoined && in_sync && passive_done && active_done).then_some((p, ar)))
            },
        )
        .with_context(|| format!("last seen: {last_seen}"))
    }

    /// Names each quarantined path, and whether the client was ever told it was stored.
    fn print_quarantine(&self, f: &Failure) -> Result<()> {
        let puts = self.client()?.all();
        for path in self.quarantined(f.victim) {
            // The service writes k<n>.tmp, fsyncs it, then renames it to k<n>.
            let key = path.strip_suffix(".tmp").unwrap_or(&path);
            let put = key
                .strip_prefix('k')
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| puts.iter().find(|p| p.n == n));
            let file = if key == path {
                path.clone()
            } else {
                format!("{path} (the service's temporary file for {key})")
            };
            let what = match put {
                Some(p) if p.acked_by.is_some() => format!("{file}: {}", self.describe_put(p)),
                Some(p) => format!(
                    "{file}: never acknowledged to the client (sent {} before the power failure)",
                    ms(f.at.saturating_duration_since(p.sent))
                ),
                None => format!("{file}: not something the client stored"),
            };
            println!("   quarantined: {what}");
        }
        Ok(())
    }

    /// Step 8: back to the node that failed; then every acknowledged write of the whole
    /// demo is read back from it. Stops the client.
    fn switch_back(&mut self, f: &Failure) -> Result<ClientStats> {
        self.heading(&format!(
            "8. Switch back: `understudy switchover` on {} returns the role to {}",
            NAMES[f.survivor], NAMES[f.victim]
        ));
        self.switchover(f.survivor, f.victim)?;
        // A few more writes on the node that came back, then the final count.
        pause(Duration::from_millis(500))?;
        let client = self.client.take().context("the client is not running")?;
        let stats = client.stop();
        let check = self.read_back(&stats.acked)?;
        println!(
            "   whole demo: {} (read from {})",
            check.summary(&self.style),
            check.served_by.join(", ")
        );
        check.ensure()?;
        Ok(stats)
    }

    /// Reads every acknowledged key back through the floating address, from the client
    /// namespace.
    fn read_back(&self, acked: &[Put]) -> Result<ReadBack> {
        let keys: Vec<u64> = acked.iter().map(|p| p.n).collect();
        // Bounded as a whole: what is not read by then counts as unreadable.
        let deadline = Instant::now() + READ_BACK_MAX;
        let results = in_netns(self.net.client(), move || {
            let mut out = Vec::with_capacity(keys.len());
            for n in keys {
                if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() > deadline {
                    out.push((n, None));
                    continue;
                }
                // A retry or two covers a connection refused by the 64-connection cap.
                let mut answer = None;
                for _ in 0..3 {
                    match http("GET", &format!("/k{n}"), b"") {
                        Ok(a) => {
                            answer = Some(a);
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                out.push((n, answer));
            }
            out
        })?;
        check_interrupted()?;
        let mut rb = ReadBack {
            acked: acked.len(),
            ..ReadBack::default()
        };
        for (put, (n, answer)) in acked.iter().zip(results) {
            let missing = || self.describe_put(put);
            match answer {
                Some(a) if a.status == 200 && a.body == value(n).as_bytes() => {
                    rb.present += 1;
                    if let Some(node) = a.node {
                        if !rb.served_by.contains(&node) {
                            rb.served_by.push(node);
                        }
                    }
                }
                Some(a) if a.status == 200 => rb.wrong.push(missing()),
                Some(a) if a.status == 404 => rb.lost.push(missing()),
                _ => rb.unreadable.push(missing()),
            }
        }
        Ok(rb)
    }
}

/// The power failure, as the later steps need it.
struct Failure {
    victim: usize,
    survivor: usize,
    /// When the victim's processes started dying.
    at: Instant,
    at_wall: SystemTime,
    /// When its cables were out: nothing of it can answer after this.
    dark: Instant,
    acked_before: usize,
    /// Resyncs the victim's copy had completed before.
    resyncs_before: u64,
    survivor_mac: [u8; 6],
    victim_mac: [u8; 6],
}

#[derive(Default)]
struct ReadBack {
    acked: usize,
    present: usize,
    /// Each as "k<n> (acknowledged by NODE at +T s)".
    lost: Vec<String>,
    wrong: Vec<String>,
    unreadable: Vec<String>,
    served_by: Vec<String>,
}

impl ReadBack {
    fn summary(&self, s: &Style) -> String {
        let text = format!(
            "{} acknowledged writes, {} present, {} lost",
            self.acked,
            self.present,
            self.lost.len() + self.wrong.len()
        );
        if self.present == self.acked {
            s.green(&text)
        } else {
            s.red(&text)
        }
    }

    fn ensure(&self) -> Result<()> {
        let first = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        if !self.lost.is_empty() {
            bail!(
                "{} acknowledged writes are missing (first: {})",
                self.lost.len(),
                first(&self.lost)
            );
        }
        if !self.wrong.is_empty() {
            bail!(
                "{} acknowledged writes read back a different value (first: {})",
                self.wrong.len(),
                first(&self.wrong)
            );
        }
        if !self.unreadable.is_empty() {
            bail!(
                "{} acknowledged writes could not be read back (first: {})",
                self.unreadable.len(),
                first(&self.unreadable)
            );
        }
        Ok(())
    }
}

/// The failover in `events`: the promotion decided after `since_unix_ms` (passive ->
/// promoting, reason failover) and the role change to active that completed it.
fn takeover_events(
    events: &[EventReport],
    since_unix_ms: u64,
) -> Option<(EventReport, EventReport)> {
    let i = events.iter().position(|e| {
        e.kind == "role-change"
            && e.to.as_deref() == Some("promoting")
            && e.reason.as_deref() == Some("failover")
            && e.at_unix_ms >= since_unix_ms
    })?;
    let decided = events[i].clone();
    let promoted = events[i + 1..]
        .iter()
        .find(|e| e.kind == "role-change" && e.to.as_deref() == Some("active"))?
        .clone();
    Some((decided, promoted))
}

/// The pair's config: the script's timings, one replicated set in sync mode, the floating
/// address and the service behind it. Paths are quoted for the shell and then for TOML.
fn config_text(dir: &Path, exe: &Path) -> Result<String> {
    let toml = |s: &str| serde_json::to_string(s).context("quoting a TOML string");
    let d = dir.display().to_string();
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let node = "\"$UNDERSTUDY_NODE\"";
    let pid = format!("{}/kv-{node}.pid", q(dir));
    let start = format!(
        "{exe} demo-service --listen 0.0.0.0:{PORT} --dir {kv} --node {node} \
         >>{dir}/service-{node}.log 2>&1 & echo $! > {pid}; sleep 0.05",
        exe = q(exe),
        kv = q(&dir.join("kv")),
        dir = q(dir),
    );
    let stop = format!("kill $(cat {pid}) 2>/dev/null; true");
    let monitor = format!("kill -0 $(cat {pid}) 2>/dev/null || exit 7");
    Ok(format!(
        r#"# Written by `understudy demo`.
[pair]
name = "demo"
heartbeat_interval_ms = 100
failover_timeout_ms = {FAILOVER_TIMEOUT_MS}
isolation_timeout_ms = 600
probe_timeout_ms = 250
state_dir = {state}
control_socket = {unused}
tls_dir = {tls}

[[node]]
name = "alpha"
channel = ["10.50.0.1:7400"]
management = "10.60.0.11:7401"

[[node]]
name = "beta"
channel = ["10.50.0.2:7400"]
management = "10.60.0.12:7401"

[public_check]
targets = ["{CLIENT_IP}"]
interval_ms = 200
timeout_ms = 150

# The service's data: replicated in real time, synchronously (an acknowledged fsync is on
# both nodes). On the active, this path is a capture filesystem; the passive applies every
# change to its own copy.
[[replicate]]
name = "{SET}"
path = {kv}
mode = "sync"

# The floating address clients use, then the application behind it.
[[resource]]
name = "address"
kind = "vip"
address = "{VIP}/24"
interface = "pub"
conflict_probe_ms = 200

[[resource]]
name = "kv"
kind = "exec"
start = {start}
stop = {stop}
monitor = {monitor}
monitor_interval_ms = 500
"#,
        state = toml(&format!("{d}/state"))?,
        unused = toml(&format!("{d}/unused.sock"))?,
        tls = toml(&format!("{d}/tls"))?,
        kv = toml(&format!("{d}/kv"))?,
        start = toml(&start)?,
        stop = toml(&stop)?,
        monitor = toml(&monitor)?,
    ))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// The value the client stores under key k<n>.
fn value(n: u64) -> String {
    format!("value {n}")
}

// ---------------------------------------------------------------------------------------
// The client side: threads that enter the client's network namespace

fn netns_file(ns: &Netns) -> Result<File> {
    let path = Path::new("/run/netns").join(ns.name());
    File::open(&path).with_context(|| format!("cannot open {}", path.display()))
}

/// Moves the calling thread (only) into the network namespace of `file`.
fn enter_netns(file: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; CLONE_NEWNET affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside `ns`, so its sockets are the client's.
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = netns_file(ns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                enter_netns(&file).context("entering the client's network namespace")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))?
    })
}

/// One request to the floating address, with the demo's short timeouts.
use understudy_testbed::http::HttpAnswer;

fn http(method: &str, path: &str, body: &[u8]) -> std::io::Result<HttpAnswer> {
    understudy_testbed::http::request(
        SocketAddr::from((VIP, PORT)),
        method,
        path,
        body,
        CONNECT_TIMEOUT,
        IO_TIMEOUT,
    )
}

/// One PUT of the client.
#[derive(Clone)]
struct Put {
    n: u64,
    sent: Instant,
    /// When the answer came, or the request gave up.
    done: Instant,
    /// The node that acknowledged it (2xx answer), if one did.
    acked_by: Option<String>,
}

/// The client: a thread in the client namespace writing k1, k2, ... through the floating
/// address, remembering which writes were acknowledged and by whom.
struct Client {
    stop: Arc<AtomicBool>,
    puts: Arc<Mutex<Vec<Put>>>,
    thread: Option<JoinHandle<()>>,
    /// Where every request is written when the client ends, times relative to `t0`.
    log: PathBuf,
    t0: Instant,
}

struct ClientStats {
    sent: usize,
    acked: Vec<Put>,
}

impl Client {
    fn start(ns: &Netns, log: PathBuf, t0: Instant) -> Result<Client> {
        let file = netns_file(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let puts = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop2, puts2) = (stop.clone(), puts.clone());
        let thread = std::thread::Builder::new()
            .name("demo-client".into())
            .spawn(move || {
                let entered = enter_netns(&file);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                let deadline = Instant::now() + CLIENT_MAX;
                let mut n = 0u64;
                while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                    n += 1;
                    let sent = Instant::now();
                    let answer = http("PUT", &format!("/k{n}"), value(n).as_bytes());
                    let acked_by = match answer {
                        Ok(a) if (200..300).contains(&a.status) => {
                            Some(a.node.unwrap_or_else(|| "?".into()))
                        }
                        _ => None,
                    };
                    lock(&puts2).push(Put {
                        n,
                        sent,
                        done: Instant::now(),
                        acked_by,
                    });
                    std::thread::sleep(PUT_INTERVAL);
                }
            })
            .context("starting the client thread")?;
        let client = Client {
            stop,
            puts,
            thread: Some(thread),
            log,
            t0,
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(anyhow!(e).context("entering the client's network namespace")),
            Err(_) => bail!("the client thread did not start"),
        }
    }

    fn finished(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }

    fn acked_count(&self) -> usize {
        lock(&self.puts)
            .iter()
            .filter(|p| p.acked_by.is_some())
            .count()
    }

    fn all(&self) -> Vec<Put> {
        lock(&self.puts).clone()
    }

    fn acked(&self) -> Vec<Put> {
        lock(&self.puts)
            .iter()
            .filter(|p| p.acked_by.is_some())
            .cloned()
            .collect()
    }

    fn median_ack_latency(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = lock(&self.puts)
            .iter()
            .filter(|p| p.acked_by.is_some())
            .map(|p| p.done - p.sent)
            .collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }

    /// The first write sent after `since` that `node` acknowledged.
    fn first_ack_after(&self, since: Instant, node: &str) -> Option<Put> {
        lock(&self.puts)
            .iter()
            .find(|p| p.sent >= since && p.acked_by.as_deref() == Some(node))
            .cloned()
    }

    /// Writes answered (or given up on) in [from, to] that were not acknowledged.
    fn failed_between(&self, from: Instant, to: Instant) -> usize {
        lock(&self.puts)
            .iter()
            .filter(|p| p.done >= from && p.done <= to && p.acked_by.is_none())
            .count()
    }

    fn stop(mut self) -> ClientStats {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // Bounded: one request (at most connect + 2 I/O timeouts) and one interval.
            let _ = t.join();
        }
        let puts = lock(&self.puts);
        ClientStats {
            sent: puts.len(),
            acked: puts
                .iter()
                .filter(|p| p.acked_by.is_some())
                .cloned()
                .collect(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Every request, for whoever reads the logs after a failure.
        let mut text = String::from("# sent_s done_s key result (times since the demo started)\n");
        for p in lock(&self.puts).iter() {
            text.push_str(&format!(
                "{:.3} {:.3} k{} {}\n",
                p.sent.saturating_duration_since(self.t0).as_secs_f64(),
                p.done.saturating_duration_since(self.t0).as_secs_f64(),
                p.n,
                p.acked_by
                    .as_deref()
                    .map_or("not-acknowledged".to_string(), |n| format!(
                        "acknowledged-by-{n}"
                    ))
            ));
        }
        if let Err(e) = std::fs::write(&self.log, text) {
            eprintln!("cannot write {}: {e}", self.log.display());
        }
    }
}

/// ARP answers seen: when each came, and the MAC that answered.
type ArpAnswers = Mutex<Vec<(Instant, [u8; 6])>>;

/// Asks "who has 10.60.0.50?" from the client every few tens of milliseconds and records
/// who answered, to see when the address answers from the new node.
struct ArpWatch {
    stop: Arc<AtomicBool>,
    /// (when the answer came, the MAC that answered).
    answers: Arc<ArpAnswers>,
    thread: Option<JoinHandle<()>>,
}

impl ArpWatch {
    fn start(ns: &Netns) -> Result<ArpWatch> {
        let file = netns_file(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop2, answers2) = (stop.clone(), answers.clone());
        let thread = std::thread::Builder::new()
            .name("demo-arp".into())
            .spawn(move || {
                let socket = enter_netns(&file).and_then(|()| ArpSocket::open());
                let socket = match socket {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let deadline = Instant::now() + ARP_WATCH_MAX;
                while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                    if socket.ask(Duration::from_millis(20), &answers2).is_err() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
            .context("starting the ARP watcher")?;
        let watch = ArpWatch {
            stop,
            answers,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(watch),
            Ok(Err(e)) => Err(anyhow!(e).context("opening an ARP socket in the client namespace")),
            Err(_) => bail!("the ARP watcher did not start"),
        }
    }

    fn first_answer_after(&self, since: Instant, mac: &[u8; 6]) -> Option<Instant> {
        lock(&self.answers)
            .iter()
            .find(|(t, m)| *t >= since && m == mac)
            .map(|(t, _)| *t)
    }
}

impl Drop for ArpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw ARP socket on the client's `pub` interface.
struct ArpSocket {
    fd: libc::c_int,
    ifindex: libc::c_int,
    my_mac: [u8; 6],
}

impl ArpSocket {
    fn open() -> std::io::Result<ArpSocket> {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Owned from here, so every early return closes it.
        let mut sock = ArpSocket {
            fd,
            ifindex: 0,
            my_mac: [0; 6],
        };
        let name = c"pub";
        // SAFETY: a NUL-terminated name; ifreq is plain data, zeroed, and the name (4 bytes
        // with its NUL) fits in ifr_name (16).
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            let mut ifr: libc::ifreq = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(name.as_ptr(), ifr.ifr_name.as_mut_ptr(), 4);
            if ifindex == 0 || libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            sock.ifindex = ifindex as libc::c_int;
            sock.my_mac = std::array::from_fn(|i| ifr.ifr_ifru.ifru_hwaddr.sa_data[i] as u8);
        }
        Ok(sock)
    }

    /// Broadcasts one request for the floating address and records every answer to it
    /// that arrives within `wait`.
    fn ask(&self, wait: Duration, answers: &ArpAnswers) -> std::io::Result<()> {
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // Ethernet/IPv4 ARP request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
        let mut req = vec![0u8, 1, 8, 0, 6, 4, 0, 1];
        req.extend_from_slice(&self.my_mac);
        req.extend_from_slice(&CLIENT_IP.octets());
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&VIP.octets());
        // SAFETY: sendto/setsockopt/recv on our socket with buffers and structs we own and
        // whose sizes we pass.
        unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = proto;
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let sent = libc::sendto(
                self.fd,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let deadline = Instant::now() + wait;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: left.as_micros().clamp(1, 999_999) as libc::suseconds_t,
                };
                libc::setsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                let mut buf = [0u8; 64];
                let n = libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 28 {
                    continue;
                }
                // A reply (op 2) from the floating address to us: an answer to our
                // question, not a gratuitous announcement.
                if buf[6..8] == [0, 2]
                    && buf[14..18] == VIP.octets()
                    && buf[24..28] == CLIENT_IP.octets()
                {
                    let mac: [u8; 6] = std::array::from_fn(|i| buf[8 + i]);
                    lock(answers).push((Instant::now(), mac));
                }
            }
        }
        Ok(())
    }
}

impl Drop for ArpSocket {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns, once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_and_quotes_paths() {
        let dir = Path::new("/tmp/demo dir/it's");
        let text = config_text(dir, Path::new("/opt/under study/understudy")).expect("text");
        let cfg = understudy_config::parse(&text, Path::new("demo.toml")).expect("valid config");
        assert_eq!(cfg.resources.len(), 2);
        assert!(text.contains(r#"'/opt/under study/understudy' demo-service"#));
    }

    #[test]
    fn strips_colour_codes() {
        assert_eq!(
            understudy_testbed::strip_ansi("\x1b[2m2026\x1b[0m \x1b[31mERROR\x1b[0m x"),
            "2026 ERROR x"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00"), None);
        assert_eq!(mac_text(&[2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
    }
}
