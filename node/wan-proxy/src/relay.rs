//! One proxied connection: its original destination, the marked upstream socket, and the two
//! delayed directions.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::delays::{Delays, Direction, Draws, next_due};

/// The mark of the proxy's own upstream sockets: the namespace's REDIRECT rule skips packets
/// carrying it, so they go straight out.
pub const MARK: u32 = 0x2D7;
pub const PROXY_PORT: u16 = 15001;
/// Chunks due this soon leave at once: tokio's timers wake at millisecond granularity, so a
/// link of a fraction of a millisecond costs only the proxy's own latency.
const IMMEDIATE: Duration = Duration::from_micros(500);
const CHUNK: usize = 64 * 1024;
/// tokio's timers have millisecond ticks and round a deadline up to the next one (a wake-up
/// then costs some more): aiming one tick early makes a chunk leave within about a
/// millisecond of its due time on either side, instead of always up to two after (a 40 ms
/// round trip measured 42.6 ms without this).
pub const TIMER_TICK: Duration = Duration::from_millis(1);

pub type Shared = Arc<RwLock<Delays>>;

/// Where a REDIRECTed connection was going (SO_ORIGINAL_DST).
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

fn set_mark(socket: &TcpSocket) -> io::Result<()> {
    let mark = MARK;
    // SAFETY: a valid socket and a u32 option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Carries one redirected connection to its original destination, each chunk after its
/// direction's delay. The upstream connect waits one round trip (the handshake).
pub async fn relay(inbound: TcpStream, delays: Shared) -> io::Result<()> {
    inbound.set_nodelay(true)?;
    let dst = original_dst(&inbound)?;
    if dst.port() == PROXY_PORT {
        return Ok(()); // not redirected: someone dialled the proxy itself
    }
    let handshake = delays.read().expect("delays lock").handshake(*dst.ip());
    tokio::time::sleep(handshake).await;
    let socket = TcpSocket::new_v4()?;
    set_mark(&socket)?;
    socket.set_nodelay(true)?;
    let upstream = match socket.connect(dst.into()).await {
        Ok(s) => s,
        Err(e) => {
            let _ = inbound.set_zero_linger(); // a reset, as without the proxy
            return Err(e);
        }
    };
    let (in_read, in_write) = inbound.into_split();
    let (up_read, up_write) = upstream.into_split();
    let ip = *dst.ip();
    tokio::join!(
        delayed_copy(in_read, up_write, delays.clone(), ip, Direction::Forward),
        delayed_copy(up_read, in_write, delays, ip, Direction::Back),
    );
    Ok(())
}

/// Copies `from` to `to`, every chunk written its delay after it was read, in order; the end
/// of `from` (or an error) shuts `to` down once everything before it is written.
pub async fn delayed_copy<R, W>(
    mut from: R,
    mut to: W,
    delays: Shared,
    dst: Ipv4Addr,
    direction: Direction,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let reader = async move {
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let seed = clock.map_or(0, |d| d.as_nanos() as u64) ^ u64::from(u32::from(dst));
        let mut draws = Draws::new(seed);
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let delay = delays.read().expect("delays lock").chunk_delay(
                dst,
                direction,
                draws.next(),
                draws.next(),
            );
            last_due = next_due(Instant::now(), delay, last_due);
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((last_due, chunk)).is_err() || n == 0 {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if due > Instant::now() + IMMEDIATE {
                sleep_until(due - TIMER_TICK).await;
            }
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                break;
            };
            if to.write_all(&chunk).await.is_err() {
                break; // the receiver is gone; the reader stops at its next send
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks arrive in order, none before its delay, and the end of the stream after them.
    #[tokio::test]
    async fn chunks_keep_their_order_and_wait_their_delay() {
        let dst: Ipv4Addr = "10.213.1.1".parse().unwrap();
        let delays =
            Delays::parse(r#"{"table": {"10.213.1.1": [30, 0]}, "jitter_ms": 20}"#).unwrap();
        let (mut app, proxy_in) = tokio::io::duplex(1 << 20);
        let (proxy_out, mut far) = tokio::io::duplex(1 << 20);
        let copy = tokio::spawn(delayed_copy(
            proxy_in,
            proxy_out,
            Arc::new(RwLock::new(delays)),
            dst,
            Direction::Forward,
        ));
        let start = Instant::now();
        let writes = tokio::spawn(async move {
            // Chunks a little apart, so that most are read one by one and get their own jitter.
            let mut sent = Vec::new();
            for i in 0..40u32 {
                let chunk = i.to_be_bytes();
                app.write_all(&chunk).await.unwrap();
                sent.extend_from_slice(&chunk);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        });
        let mut got = vec![0u8; 1];
        far.read_exact(&mut got).await.unwrap();
        let least = Duration::from_millis(30) - TIMER_TICK;
        assert!(start.elapsed() >= least, "{:?}", start.elapsed());
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, writes.await.unwrap());
        copy.await.unwrap();
    }
}
