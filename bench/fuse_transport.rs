//! What a FUSE round trip costs on this machine over the two transports the kernel offers:
//! the classic `/dev/fuse` read/write, which the capture filesystem uses (through fuser), and
//! FUSE over io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`, off until
//! `/sys/module/fuse/parameters/enable_uring` is set), which fuser has no transport for yet.
//!
//! Small files and small synced writes are bounded by FUSE round trips (docs/BENCHMARKS.md):
//! this measures how much of that the io_uring transport would take away, before anyone
//! builds it. A minimal filesystem (the root and one file whose attributes never stay valid,
//! so that every `stat` is one GETATTR) is served once per transport, and a `stat` loop times
//! the round trip. The io_uring side keeps one queue per CPU, its thread pinned there, as the
//! kernel expects: a request goes to the queue of the CPU its caller runs on.
//!
//! It also reads a 256 MiB file whose every READ the filesystem answers with zeros: the
//! transport's own rate for large replies, with no disk behind it.
//!
//! Run with `bench/run.sh fuse_round_trip`; BENCH_FUSE_STATS (50000) stats per transport and
//! round, BENCH_ROUNDS (3). Needs root; `enable_uring` is restored afterwards.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "../crates/cli/tests/common/mod.rs"]
mod common;

use common::bench::{med, rounds};
use common::env_u64;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use understudy_testbed::require_root;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
const IN_HEADER_BYTES: usize = 40;
const OUT_HEADER_BYTES: usize = 16;
/// A ring entry's payload buffer: the kernel wants at least max_pages (32) pages.
const PAYLOAD_BYTES: usize = 256 << 10;
/// Ring entries per queue: a stat loop has one request in flight.
const ENTRIES_PER_QUEUE: usize = 2;
const OP_LOOKUP: u32 = 1;
const OP_GETATTR: u32 = 3;
const OP_OPEN: u32 = 14;
const OP_READ: u32 = 15;
const OP_RELEASE: u32 = 18;
const OP_INIT: u32 = 26;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
const INIT_EXT: u32 = 1 << 30;
/// FUSE_OVER_IO_URING is bit 41 of the init flags: bit 9 of `flags2`.
const FLAGS2_OVER_IO_URING: u32 = 1 << (41 - 32);

#[repr(C)]
#[derive(Clone, Copy)]
struct InHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16,
}

#[repr(C)]
struct OutHeader {
    len: u32,
    error: i32,
    unique: u64,
}

#[repr(C)]
#[derive(Default)]
struct Attr {
    ino: u64,
    size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttrOut {
    attr_valid: u64,
    attr_valid_nsec: u32,
    dummy: u32,
    attr: Attr,
}

#[repr(C)]
#[derive(Default)]
struct EntryOut {
    nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    attr: Attr,
}

#[repr(C)]
#[derive(Default)]
struct InitOut {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_background: u16,
    congestion_threshold: u16,
    max_write: u32,
    time_gran: u32,
    max_pages: u16,
    map_alignment: u16,
    flags2: u32,
    max_stack_depth: u32,
    request_timeout: u16,
    unused: [u16; 11],
}

/// `struct fuse_uring_req_header`: the fuse header, the op's own header, then the entry's.
#[repr(C)]
struct RingHeader {
    in_out: [u8; 128],
    op_in: [u8; 128],
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

fn bytes<T>(v: &T) -> &[u8] {
    // SAFETY: the ABI structs above are plain old data with no padding the kernel reads.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn attr(ino: u64) -> Attr {
    Attr {
        ino,
        mode: if ino == 1 { 0o40755 } else { 0o100644 },
        size: if ino == 3 { BIG_BYTES } else { 0 },
        nlink: 1,
        blksize: 4096,
        ..Default::default()
    }
}

/// Bytes of the file `big` that [`read_throughput`] reads.
const BIG_BYTES: u64 = 256 << 20;
/// What a READ of `big` returns: zeros, from a static buffer (no allocation per reply).
static ZEROS: [u8; PAYLOAD_BYTES] = [0; PAYLOAD_BYTES];

/// The filesystem: answers one request (`arg`: everything after the in header) with
/// (negative errno, reply body). Nodes: 1 the root, 2 `f` (attributes never valid), 3 `big`.
fn answer(h: &InHeader, arg: &[u8]) -> (i32, std::borrow::Cow<'static, [u8]>) {
    use std::borrow::Cow;
    let u32_at = |at: usize| {
        arg.get(at..at + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    match h.opcode {
        OP_GETATTR => {
            // The root's and big's attributes stay valid; f's never do.
            let attr_valid = if h.nodeid == 2 { 0 } else { 1000 };
            let out = AttrOut {
                attr_valid,
                attr: attr(h.nodeid),
                ..Default::default()
            };
            (0, Cow::Owned(bytes(&out).to_vec()))
        }
        OP_LOOKUP if h.nodeid == 1 => {
            let nodeid = match arg.split(|&b| b == 0).next() {
                Some(b"f") => 2,
                Some(b"big") => 3,
                _ => return (-libc::ENOENT, Cow::Borrowed(&[])),
            };
            let out = EntryOut {
                nodeid,
                entry_valid: 1000,
                attr_valid: if nodeid == 2 { 0 } else { 1000 },
                attr: attr(nodeid),
                ..Default::default()
            };
            (0, Cow::Owned(bytes(&out).to_vec()))
        }
        // fuse_open_out: fh, open_flags, backing_id; all zero (a cached open).
        OP_OPEN => (0, Cow::Borrowed(&ZEROS[..16])),
        OP_READ => {
            // fuse_read_in: fh u64, offset u64, size u32, ...
            let offset = arg
                .get(8..16)
                .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])));
            let size = u64::from(u32_at(16)).min(PAYLOAD_BYTES as u64);
            let n = size.min(BIG_BYTES.saturating_sub(offset)) as usize;
            (0, Cow::Borrowed(&ZEROS[..n]))
        }
        OP_RELEASE => (0, Cow::Borrowed(&[])),
        OP_LOOKUP => (-libc::ENOENT, Cow::Borrowed(&[])),
        _ => (-libc::ENOSYS, Cow::Borrowed(&[])),
    }
}

/// Serves `/dev/fuse` by read and write: INIT always (then says so on `initialized`), then
/// everything the rings do not take. Ends when the filesystem is unmounted.
fn classic_loop(fd: i32, offer_uring: bool, initialized: std::sync::mpsc::Sender<()>) {
    let mut buf = vec![0u8; PAYLOAD_BYTES + 4096];
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n < IN_HEADER_BYTES as isize {
            return; // ENODEV once unmounted
        }
        // SAFETY: at least a header was read; read_unaligned copes with the alignment.
        let h: InHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let arg = &buf[IN_HEADER_BYTES..n as usize];
        let (error, body) = if h.opcode == OP_INIT {
            let minor = arg
                .get(4..8)
                .map_or(0, |m| u32::from_ne_bytes([m[0], m[1], m[2], m[3]]));
            let out = InitOut {
                major: 7,
                minor: minor.min(44),
                max_readahead: 128 << 10,
                flags: INIT_EXT,
                max_background: 16,
                congestion_threshold: 12,
                max_write: 128 << 10,
                time_gran: 1,
                flags2: if offer_uring { FLAGS2_OVER_IO_URING } else { 0 },
                ..Default::default()
            };
            (0, std::borrow::Cow::Owned(bytes(&out).to_vec()))
        } else {
            answer(&h, arg)
        };
        let out = OutHeader {
            len: (OUT_HEADER_BYTES + body.len()) as u32,
            error,
            unique: h.unique,
        };
        let iov = [
            libc::iovec {
                iov_base: bytes(&out).as_ptr() as *mut _,
                iov_len: OUT_HEADER_BYTES,
            },
            libc::iovec {
                iov_base: body.as_ptr() as *mut _,
                iov_len: body.len(),
            },
        ];
        // SAFETY: both slices outlive the call.
        unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        if h.opcode == OP_INIT {
            let _ = initialized.send(());
        }
    }
}

/// A URING_CMD for `/dev/fuse`: `cmd` holds `struct fuse_uring_cmd_req`, `addr` the entry's
/// two iovecs (header, payload), and `len` must say two.
fn ring_cmd(
    fd: i32,
    cmd_op: u32,
    commit_id: u64,
    qid: u16,
    iovs: u64,
    entry: usize,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let mut sqe = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(Some(iovs))
        .build()
        .user_data(entry as u64);
    // SAFETY: Entry128 is the 128-byte SQE; `len` is the u32 at offset 24.
    let raw = unsafe { &mut *(&mut sqe as *mut squeue::Entry128).cast::<[u8; 128]>() };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    sqe
}

/// One io_uring queue, pinned to CPU `qid`: registers its entries, then answers each request
/// and fetches the next in one submission. Ends when the filesystem is unmounted (or the
/// kernel refuses the ring).
fn ring_queue(fd: i32, qid: u16, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity on our own thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(qid as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = match IoUring::builder().build(8) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("io_uring: {e}")));
            return;
        }
    };
    // SAFETY: RingHeader is plain data, valid zeroed.
    let mut headers: Vec<Box<RingHeader>> = (0..ENTRIES_PER_QUEUE)
        .map(|_| Box::new(unsafe { std::mem::zeroed() }))
        .collect();
    let mut payloads: Vec<Vec<u8>> = (0..ENTRIES_PER_QUEUE)
        .map(|_| vec![0u8; PAYLOAD_BYTES])
        .collect();
    let iovs: Vec<Box<[libc::iovec; 2]>> = (0..ENTRIES_PER_QUEUE)
        .map(|i| {
            Box::new([
                libc::iovec {
                    iov_base: (&mut *headers[i] as *mut RingHeader).cast(),
                    iov_len: std::mem::size_of::<RingHeader>(),
                },
                libc::iovec {
                    iov_base: payloads[i].as_mut_ptr().cast(),
                    iov_len: PAYLOAD_BYTES,
                },
            ])
        })
        .collect();
    for (i, iov) in iovs.iter().enumerate() {
        let sqe = ring_cmd(fd, CMD_REGISTER, 0, qid, iov.as_ptr() as u64, i);
        // SAFETY: the iovecs and buffers live until this function returns, after the ring.
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            let _ = ready.send(Err("submission queue full".into()));
            return;
        }
    }
    if let Err(e) = ring.submit() {
        let _ = ready.send(Err(format!("register: {e}")));
        return;
    }
    let _ = ready.send(Ok(()));
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return,
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (entry, result) in done {
            let i = entry as usize;
            if result < 0 {
                return; // ENOTCONN once unmounted, EOPNOTSUPP when the kernel has it off
            }
            // SAFETY: the kernel wrote a fuse_in_header at the start of in_out.
            let h: InHeader =
                unsafe { std::ptr::read_unaligned(headers[i].in_out.as_ptr().cast()) };
            let payload_len = (headers[i].payload_sz as usize).min(PAYLOAD_BYTES);
            // The classic layout after the in header: the op's header (in op_in), then the rest.
            let op_len = (h.len as usize)
                .saturating_sub(IN_HEADER_BYTES + payload_len)
                .min(128);
            let mut arg = headers[i].op_in[..op_len].to_vec();
            arg.extend_from_slice(&payloads[i][..payload_len]);
            let (error, body) = answer(&h, &arg);
            payloads[i][..body.len()].copy_from_slice(&body);
            let out = OutHeader {
                len: (OUT_HEADER_BYTES + body.len()) as u32,
                error,
                unique: h.unique,
            };
            headers[i].in_out[..OUT_HEADER_BYTES].copy_from_slice(bytes(&out));
            headers[i].payload_sz = body.len() as u32;
            let sqe = ring_cmd(
                fd,
                CMD_COMMIT_AND_FETCH,
                headers[i].commit_id,
                qid,
                iovs[i].as_ptr() as u64,
                i,
            );
            // SAFETY: as above.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                return;
            }
        }
    }
}

/// The filesystem mounted at `mountpoint` and its server threads; unmounts (and waits for
/// the threads to end) when dropped, also when the benchmark fails.
struct Served {
    mountpoint: CString,
    threads: Vec<JoinHandle<()>>,
    _dev: OwnedFd,
}

impl Served {
    fn mount(mountpoint: &Path, uring: bool) -> Served {
        // SAFETY: plain open(2).
        let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(
            fd >= 0,
            "open /dev/fuse: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: we own the descriptor just opened.
        let dev = unsafe { OwnedFd::from_raw_fd(fd) };
        let target = CString::new(mountpoint.as_os_str().as_encoded_bytes()).expect("no NUL");
        let opts = CString::new(format!(
            "fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions"
        ))
        .expect("no NUL");
        // SAFETY: valid C strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                c"understudy-probe".as_ptr(),
                target.as_ptr(),
                c"fuse.understudy-probe".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
        let (init_tx, init_rx) = std::sync::mpsc::channel();
        let mut served = Served {
            mountpoint: target,
            threads: vec![std::thread::spawn(move || classic_loop(fd, uring, init_tx))],
            _dev: dev,
        };
        // Once INIT accepted io_uring, the kernel holds every request until all queues are
        // registered: nothing may touch the mount before.
        init_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the kernel sent INIT");
        if uring {
            // SAFETY: plain sysconf.
            let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u16;
            let (tx, rx) = std::sync::mpsc::channel();
            for qid in 0..cpus {
                let tx = tx.clone();
                served
                    .threads
                    .push(std::thread::spawn(move || ring_queue(fd, qid, tx)));
            }
            for _ in 0..cpus {
                let registered = rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("a queue answered");
                registered.expect("ring registered");
            }
        }
        served
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(self.mountpoint.as_ptr(), libc::MNT_DETACH) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Microseconds per `stat` of the file whose attributes expire at once: one GETATTR each.
fn stat_loop(mountpoint: &Path, n: u64) -> f64 {
    let file = CString::new(mountpoint.join("f").as_os_str().as_encoded_bytes()).expect("no NUL");
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    let mut stat = || {
        // SAFETY: stat into our own buffer.
        let r = unsafe { libc::stat(file.as_ptr(), st.as_mut_ptr()) };
        assert_eq!(r, 0, "stat: {}", std::io::Error::last_os_error());
    };
    for _ in 0..1000 {
        stat();
    }
    let started = Instant::now();
    for _ in 0..n {
        stat();
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// MB/s of one sequential read of `big` in 1 MiB reads (a fresh mount: nothing cached), the
/// filesystem answering every READ with zeros: the transport's own rate for large replies.
fn read_throughput(mountpoint: &Path) -> f64 {
    use std::io::Read;
    let mut file = std::fs::File::open(mountpoint.join("big")).expect("open big");
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).expect("read big");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, BIG_BYTES, "read all of big");
    total as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Sets `enable_uring` for the run and puts the old value back, also on failure.
struct UringSwitch(String);

impl UringSwitch {
    fn on() -> Option<UringSwitch> {
        let old = std::fs::read_to_string(ENABLE_URING).ok()?;
        std::fs::write(ENABLE_URING, "1").ok()?;
        Some(UringSwitch(old.trim().to_string()))
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, &self.0);
    }
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn fuse_round_trip() {
    if !require_root("fuse_round_trip") {
        return;
    }
    let n = env_u64("BENCH_FUSE_STATS", 50_000);
    let rounds = rounds();
    let Some(_switch) = UringSwitch::on() else {
        println!("BENCH fuse_round_trip: this kernel has no FUSE over io_uring ({ENABLE_URING} missing); nothing to compare");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut classic, mut uring, mut classic_mbs, mut uring_mbs) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let (c, cr) = {
            let _fs = Served::mount(dir.path(), false);
            (stat_loop(dir.path(), n), read_throughput(dir.path()))
        };
        let (u, ur) = {
            let _fs = Served::mount(dir.path(), true);
            (stat_loop(dir.path(), n), read_throughput(dir.path()))
        };
        println!("BENCH fuse_round_trip round {round}: classic {c:.1} us per stat, {cr:.0} MB/s read; io_uring {u:.1} us per stat, {ur:.0} MB/s read");
        classic.push(c);
        uring.push(u);
        classic_mbs.push(cr);
        uring_mbs.push(ur);
    }
    let (c, u) = (med(classic), med(uring));
    println!(
        "BENCH fuse_round_trip: stat of a FUSE file whose attributes expire at once (one GETATTR each), {n} per round, median of {rounds}: /dev/fuse read/write {c:.1} us, io_uring {u:.1} us; ratio={:.3} (io_uring / classic), no target",
        u / c
    );
    let (cr, ur) = (med(classic_mbs), med(uring_mbs));
    println!(
        "BENCH fuse_read_rate: {} MiB read in 1 MiB reads from a fresh mount, every READ answered with zeros (128 KiB readahead requests), median of {rounds}: /dev/fuse read/write {cr:.0} MB/s, io_uring {ur:.0} MB/s; ratio={:.3} (io_uring / classic), no target",
        BIG_BYTES >> 20,
        ur / cr
    );
}
