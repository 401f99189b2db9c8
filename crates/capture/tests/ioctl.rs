//! The capture filesystem refuses ioctls itself, quietly: `isatty()` (an ioctl that Python's
//! `open()` asks of every file) gets ENOTTY as on a native file, and nothing is logged at
//! warning level for it. A test binary of its own: it installs a process-wide tracing
//! subscriber that counts the warnings of every thread, the FUSE workers' included.
//!
//! Needs root and /dev/fuse; skips otherwise, except under CI=true where it fails.

mod common;

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Counts events at warning level or worse.
struct CountWarnings(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for CountWarnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() <= Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `ioctl(TCGETS)` on `fd`: Ok, or the errno it failed with.
fn tcgets(fd: i32) -> Result<(), i32> {
    // SAFETY: termios is plain old data, and TCGETS writes at most one of them.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call; t outlives it.
    if unsafe { libc::ioctl(fd, libc::TCGETS, &mut t) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn ioctls_are_refused_like_a_plain_files_without_a_warning_each() {
    if !require_root("ioctls_are_refused_like_a_plain_files_without_a_warning_each") {
        return;
    }
    let warnings = Arc::new(AtomicUsize::new(0));
    tracing_subscriber::registry()
        .with(CountWarnings(warnings.clone()))
        .init();
    let f = Fixture::new();
    std::fs::write(f.m("file"), b"x").expect("write");
    // Opened for writing: served through FUSE, not the kernel's read passthrough.
    let through = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.m("file"))
        .expect("open through the mount");
    let native = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.b("file"))
        .expect("open the backing file");
    assert_eq!(
        tcgets(native.as_raw_fd()),
        Err(libc::ENOTTY),
        "a native file"
    );
    for _ in 0..3 {
        assert_eq!(
            tcgets(through.as_raw_fd()),
            Err(libc::ENOTTY),
            "through the mount, as natively"
        );
    }
    drop(through);
    // Counted before the unmount, whose own warnings are another matter.
    assert_eq!(
        warnings.load(Ordering::Relaxed),
        0,
        "warnings logged for three refused ioctls"
    );
    drop(f);
}
