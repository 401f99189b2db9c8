//! The channel's bulk rate: `BENCH_TLS_MIB` MiB (default 1024) sent in 1 MiB writes over
//! the channel's real mutual TLS (the pair's own CA, `understudy_tls::connect` and `accept`:
//! rustls's handshake, then the channel's record layer) on loopback, read in 4 MiB frames,
//! against the same transfer over plain TCP in the same run. It shows what the encrypted
//! stream alone costs a resync or a catch-up on this machine, apart from the disks and the
//! capture. Run with `bench/run.sh tls_stream`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use understudy_tls::{accept, connect, generate_pair, load_node_tls, write_pair};

const TIMEOUT: Duration = Duration::from_secs(10);

const CHUNK: usize = 1 << 20;

fn mib() -> usize {
    std::env::var("BENCH_TLS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// CPU seconds this process used so far (user + system).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn send_all<W: AsyncWrite + Unpin>(mut w: W, total: usize) {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
    for _ in 0..total {
        w.write_all(&chunk).await.unwrap();
    }
    w.flush().await.unwrap();
    w.shutdown().await.unwrap();
}

async fn receive_all<R: AsyncRead + Unpin>(mut r: R, total: usize) -> usize {
    let mut buf = vec![0u8; 4 * CHUNK];
    let mut got = 0usize;
    while got < total * CHUNK {
        let want = (total * CHUNK - got).min(buf.len());
        r.read_exact(&mut buf[..want]).await.unwrap();
        got += want;
    }
    got
}

/// (seconds, CPU seconds) for the plain TCP transfer.
async fn plain(total: usize) -> (f64, f64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cpu, t) = (cpu_secs(), Instant::now());
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        receive_all(s, total).await
    });
    let c = TcpStream::connect(addr).await.unwrap();
    send_all(c, total).await;
    assert_eq!(server.await.unwrap(), total * CHUNK);
    (t.elapsed().as_secs_f64(), cpu_secs() - cpu)
}

/// (seconds, CPU seconds) for the transfer over the channel's TLS.
async fn encrypted(total: usize) -> (f64, f64) {
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = tmp.path().join("certs");
    write_pair(
        &certs,
        &generate_pair("bench", &["alpha", "beta"]).unwrap(),
        false,
    )
    .unwrap();
    let server = load_node_tls(&certs, "beta", "alpha").unwrap();
    let client = load_node_tls(&certs, "alpha", "beta").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(&server, tcp, TIMEOUT).await
    });
    let c = connect(&client, addr, TIMEOUT).await.unwrap();
    let (s, _) = task.await.unwrap().unwrap();
    let (cpu, t) = (cpu_secs(), Instant::now());
    let server = tokio::spawn(async move { receive_all(s, total).await });
    send_all(c, total).await;
    assert_eq!(server.await.unwrap(), total * CHUNK);
    (t.elapsed().as_secs_f64(), cpu_secs() - cpu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with bench/run.sh"]
async fn tls_stream_rate_against_plain_tcp() {
    let total = mib();
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows.push((plain(total).await, encrypted(total).await));
    }
    for ((ps, pc), (ts, tc)) in &rows {
        println!(
            "BENCH tls_stream {total} MiB: plain TCP {:.0} MB/s ({pc:.2} s CPU), TLS {:.0} MB/s ({tc:.2} s CPU); rate ratio {:.3}",
            (total * CHUNK) as f64 / ps / 1e6,
            (total * CHUNK) as f64 / ts / 1e6,
            ps / ts
        );
    }
}
