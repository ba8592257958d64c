//! Frame streams: the node's frames to a peer travel on one long-lived stream per peer, in
//! order, as many per write as are queued when the writer runs.
//!
//! # Wire format
//! On the protocol `/replicator/<protocol_id>/frames/1.0.0` (negotiated once per stream):
//! ```text
//! opener   -> acceptor: version:u8 (= 1)
//! acceptor -> opener:   version:u8 (= 1)        only if it speaks that version; else it resets
//! opener   -> acceptor: (len:u32 big-endian, len bytes)*
//! ```
//! After its version byte the acceptor writes nothing; the opener reads nothing but the end of
//! the stream. Frames go one way: each side opens its own stream to send.
//!
//! # Tasks
//! - one *writer* per peer sent to (spawned by the first [`Links::send`] to it): it waits for
//!   frames, opens the stream when it has none (dialing if needed), writes everything queued
//!   in one go (length-prefixed, in chunks of [`CHUNK_BYTES`]) and flushes once;
//! - one *acceptor* ([`accept_streams`]) that takes inbound streams and runs one *reader* per
//!   peer (the newest stream of a peer replaces its older one: a sender only opens a new
//!   stream when its old one broke).
//!
//! No task, timer, stream or allocation per frame beyond the frame itself.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::io::BufReader;
use futures::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

use crate::codec::read_frame;
use crate::streams::Opener;
use crate::{FrameCounts, NetError, NetEvent, NetStats, PeerStats};

/// The version of the frame stream protocol this node speaks.
pub(crate) const VERSION: u8 = 1;
/// Frames are copied into a buffer of about this size before a write; larger frames are
/// written straight from their own buffer.
const CHUNK_BYTES: usize = 64 * 1024;
/// The read buffer of an inbound stream.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// How long an acceptor waits for the opener's version byte.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between two failed attempts to open a stream to a peer (cut short when a
/// connection to the peer comes up).
const OPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A write to a frame stream that makes no progress for this long means the stream is dead,
/// whatever it says: its frames are given up and the next go on a new stream. (Seen: a peer
/// paused for 20 s, its connection closed meanwhile by the down-member check, and the writer
/// blocked in a write to a stream of that connection that never woke, so that no frame
/// reached the peer again.)
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
const OPEN_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The bounds of the send side, from [`crate::NetConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) frame_max_bytes: usize,
    pub(crate) peer_frames_max: usize,
    pub(crate) peer_bytes_max: usize,
    pub(crate) total_frames_max: usize,
    pub(crate) total_bytes_max: usize,
    /// Peers with a queue, a writer or a reader.
    pub(crate) peers_max: usize,
    /// Opening a stream: dial, negotiation and version exchange.
    pub(crate) open_timeout: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    writes: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_dropped: AtomicU64,
    frames_failed: AtomicU64,
    streams_opened: AtomicU64,
    streams_refused: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FrameCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FrameCounts {
            frames_sent: get(&self.frames_sent),
            bytes_sent: get(&self.bytes_sent),
            writes: get(&self.writes),
            frames_received: get(&self.frames_received),
            bytes_received: get(&self.bytes_received),
            frames_dropped: get(&self.frames_dropped),
            frames_failed: get(&self.frames_failed),
            streams_opened: get(&self.streams_opened),
            streams_refused: get(&self.streams_refused),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The frames waiting for a peer's writer.
#[derive(Debug, Default)]
struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer task, once spawned.
    writer: Option<AbortHandle>,
    /// Forgotten or stopped: nothing is queued any more.
    closed: bool,
}

/// One peer: its send queue and counters.
#[derive(Debug)]
pub(crate) struct Peer {
    id: PeerId,
    counters: Counters,
    out: Mutex<OutQueue>,
    /// Frames were queued (the queue went from empty to not empty).
    queued: Notify,
    /// A connection to the peer came up: a writer waiting out a backoff tries again.
    connected: Notify,
}

impl Peer {
    fn new(id: PeerId) -> Self {
        Self {
            id,
            counters: Counters::default(),
            out: Mutex::new(OutQueue::default()),
            queued: Notify::new(),
            connected: Notify::new(),
        }
    }

    fn out(&self) -> MutexGuard<'_, OutQueue> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The send queues, writers and counters of every peer; shared by the [`crate::Client`]s
/// (which queue frames), the writers, the readers and the event loop (which tells about
/// connections, forgets peers and stops everything).
pub(crate) struct Links {
    limits: Limits,
    /// Bounded by [`Limits::peers_max`].
    peers: Mutex<HashMap<PeerId, Arc<Peer>>>,
    totals: Counters,
    queued_frames: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Leaving or stopped: new frames are refused.
    refusing: AtomicBool,
    opener: Opener,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Links {
    /// Must be called inside a tokio runtime (writers are spawned on it).
    pub(crate) fn new(limits: Limits, opener: Opener) -> Arc<Self> {
        Arc::new(Self {
            limits,
            peers: Mutex::new(HashMap::new()),
            totals: Counters::default(),
            queued_frames: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            opener,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, Arc<Peer>>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `id`, created if there is room.
    fn peer(&self, id: PeerId) -> Option<Arc<Peer>> {
        let mut peers = self.peers();
        if let Some(peer) = peers.get(&id) {
            return Some(peer.clone());
        }
        if peers.len() >= self.limits.peers_max {
            return None;
        }
        let peer = Arc::new(Peer::new(id));
        peers.insert(id, peer.clone());
        Some(peer)
    }

    /// Queues `frame` for `to` and returns at once; the peer's writer sends it with whatever
    /// else is queued when it runs.
    pub(crate) fn send(self: &Arc<Self>, to: PeerId, frame: Vec<u8>) -> Result<(), NetError> {
        let len = frame.len();
        if len > self.limits.frame_max_bytes {
            return Err(NetError::FrameTooLarge {
                len,
                max: self.limits.frame_max_bytes,
            });
        }
        if self.refusing() {
            return Err(NetError::Stopped);
        }
        let Some(peer) = self.peer(to) else {
            add(&self.totals.frames_dropped, 1);
            return Err(NetError::QueueFull { peer: to });
        };
        let mut out = peer.out();
        if out.closed {
            // Forgotten (or stopped) while this call looked it up: like a frame sent just
            // before the forget.
            add(&self.totals.frames_dropped, 1);
            add(&peer.counters.frames_dropped, 1);
            return Ok(());
        }
        if out.frames.len() >= self.limits.peer_frames_max
            || out.bytes + len > self.limits.peer_bytes_max
            || !self.reserve_total(len)
        {
            drop(out);
            add(&self.totals.frames_dropped, 1);
            add(&peer.counters.frames_dropped, 1);
            return Err(NetError::QueueFull { peer: to });
        }
        let was_empty = out.frames.is_empty();
        out.frames.push_back(frame);
        out.bytes += len;
        if out.writer.is_none() {
            let task = run_writer(self.clone(), peer.clone());
            out.writer = Some(self.runtime.spawn(task).abort_handle());
        }
        drop(out);
        if was_empty {
            peer.queued.notify_one();
        }
        Ok(())
    }

    /// Counts a frame to this node itself that could not be queued.
    pub(crate) fn count_dropped(&self) {
        add(&self.totals.frames_dropped, 1);
    }

    fn reserve_total(&self, len: usize) -> bool {
        let frames = self.queued_frames.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if frames > self.limits.total_frames_max || bytes > self.limits.total_bytes_max {
            self.release_total(1, len);
            return false;
        }
        true
    }

    fn release_total(&self, frames: usize, bytes: usize) {
        self.queued_frames.fetch_sub(frames, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Moves everything queued for `peer`, oldest first, into `batch` (empty), which gives its
    /// room to the queue in exchange.
    fn take_queued(&self, peer: &Peer, batch: &mut VecDeque<Vec<u8>>) {
        debug_assert!(batch.is_empty());
        let mut out = peer.out();
        std::mem::swap(&mut out.frames, batch);
        let bytes = std::mem::take(&mut out.bytes);
        // Under the peer's lock, as `send` reserves: a send that finds the peer's room given
        // back also finds the totals given back. Released after the lock, the totals briefly
        // counted this batch and a new frame together, above the peer's own bound (seen under
        // load: 9 KiB queued against a bound of 8, in tests/network.rs).
        self.release_total(batch.len(), bytes);
        drop(out);
    }

    /// A connection to `peer` came up: its writer, if it waits out a backoff, tries now.
    pub(crate) fn connected(&self, peer: &PeerId) {
        if let Some(peer) = self.peers().get(peer) {
            peer.connected.notify_one();
        }
    }

    /// The peer left or was forgotten: its writer stops and what is queued is dropped. A
    /// later send to it starts afresh.
    pub(crate) fn forget(&self, id: &PeerId) {
        let peer = self.peers().remove(id);
        if let Some(peer) = peer {
            self.close(&peer);
        }
    }

    fn close(&self, peer: &Peer) {
        let mut out = peer.out();
        out.closed = true;
        if let Some(writer) = out.writer.take() {
            writer.abort();
        }
        let frames = std::mem::take(&mut out.frames);
        let bytes = std::mem::take(&mut out.bytes);
        drop(out);
        self.release_total(frames.len(), bytes);
        let n = frames.len() as u64;
        add(&self.totals.frames_failed, n);
        add(&peer.counters.frames_failed, n);
    }

    /// From now on sends fail with [`NetError::Stopped`]; what is queued is still written.
    pub(crate) fn refuse_new(&self) {
        self.refusing.store(true, Ordering::Release);
    }

    /// Whether new frames are refused (leaving or stopped).
    pub(crate) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Refuses new frames and stops every writer.
    pub(crate) fn stop(&self) {
        self.refuse_new();
        let peers: Vec<Arc<Peer>> = self.peers().drain().map(|(_, p)| p).collect();
        for peer in peers {
            self.close(&peer);
        }
    }

    /// Drops the entries that no task uses any more (readers of streams that ended); the
    /// entries of peers with a writer stay until forgotten.
    pub(crate) fn collect_garbage(&self) {
        self.peers().retain(|_, peer| Arc::strong_count(peer) > 1);
    }

    pub(crate) fn stats(&self) -> NetStats {
        let mut peers: Vec<PeerStats> = self
            .peers()
            .values()
            .map(|peer| {
                let out = peer.out();
                PeerStats {
                    peer: peer.id,
                    counts: peer.counters.snapshot(),
                    frames_queued: out.frames.len(),
                    bytes_queued: out.bytes,
                }
            })
            .collect();
        peers.sort_by_key(|p| p.peer);
        NetStats {
            total: self.totals.snapshot(),
            frames_queued: self.queued_frames.load(Ordering::Acquire),
            bytes_queued: self.queued_bytes.load(Ordering::Acquire),
            peers,
        }
    }
}

/// Sends the frames queued for `peer`, forever (aborted when the peer is forgotten or the
/// network stops).
async fn run_writer(links: Arc<Links>, peer: Arc<Peer>) {
    let mut stream: Option<Stream> = None;
    let mut backoff = OPEN_BACKOFF_MIN;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
    let mut batch: VecDeque<Vec<u8>> = VecDeque::new();
    // Whether `batch` is one of which no byte reached a stream that turned out to be broken:
    // it is sent once more, on a new stream, before anything else.
    let mut retry = false;
    loop {
        let retried = std::mem::take(&mut retry);
        if !retried {
            batch.clear();
            if batch.capacity() > 1024 {
                batch = VecDeque::new();
            }
            links.take_queued(&peer, &mut batch);
            if batch.is_empty() {
                wait_for_frames(&peer, &mut stream).await;
                continue;
            }
        }
        let open = match stream.as_mut() {
            Some(open) => open,
            None => match open_stream(&links, peer.id).await {
                Ok(opened) => {
                    backoff = OPEN_BACKOFF_MIN;
                    add(&links.totals.streams_opened, 1);
                    add(&peer.counters.streams_opened, 1);
                    stream.insert(opened)
                }
                Err(reason) => {
                    let n = batch.len() as u64;
                    add(&links.totals.frames_failed, n);
                    add(&peer.counters.frames_failed, n);
                    debug!(peer = %peer.id, frames = n, %reason, retry_in = ?backoff, "cannot open a frame stream; frames dropped");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = peer.connected.notified() => {}
                    }
                    backoff = (backoff * 2).min(OPEN_BACKOFF_MAX);
                    continue;
                }
            },
        };
        match write_batch(open, &batch, &mut buf, Some(WRITE_STALL_TIMEOUT)).await {
            Ok(bytes) => {
                let n = batch.len() as u64;
                for counters in [&links.totals, &peer.counters] {
                    add(&counters.frames_sent, n);
                    add(&counters.bytes_sent, bytes);
                    add(&counters.writes, 1);
                }
            }
            Err((written, e)) => {
                stream = None;
                if !written && !retried {
                    debug!(peer = %peer.id, error = %e, "frame stream broken; sending the batch on a new one");
                    retry = true;
                } else {
                    let n = batch.len() as u64;
                    add(&links.totals.frames_failed, n);
                    add(&peer.counters.frames_failed, n);
                    debug!(peer = %peer.id, error = %e, frames = n, "frame stream broken while writing; frames lost");
                }
            }
        }
        if buf.capacity() > 4 * CHUNK_BYTES {
            buf = Vec::with_capacity(CHUNK_BYTES);
        }
    }
}

/// Waits until frames are queued for `peer`. Meanwhile notices the end of its stream (the
/// acceptor writes nothing after its version byte: any read that completes means the stream
/// is over), so that the next frames go on a new one.
async fn wait_for_frames(peer: &Peer, stream: &mut Option<Stream>) {
    let Some(open) = stream.as_mut() else {
        peer.queued.notified().await;
        return;
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        () = peer.queued.notified() => {}
        read = open.read(&mut probe) => {
            debug!(peer = %peer.id, ?read, "frame stream closed by the peer");
            *stream = None;
        }
    }
}

/// Opens a frame stream to `peer` (dialing it if not connected) and exchanges versions.
async fn open_stream(links: &Links, peer: PeerId) -> Result<Stream, String> {
    let open = async {
        let mut stream = links.opener.open(peer).await?;
        let io_error = |e: io::Error| format!("version exchange: {e}");
        stream.write_all(&[VERSION]).await.map_err(io_error)?;
        stream.flush().await.map_err(io_error)?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.map_err(io_error)?;
        if answer[0] != VERSION {
            return Err(format!(
                "the peer answered frame stream version {}, this node speaks {VERSION}",
                answer[0]
            ));
        }
        Ok(stream)
    };
    tokio::time::timeout(links.limits.open_timeout, open)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {:?}", links.limits.open_timeout)))
}

/// Writes `frames`, each as a big-endian `u32` length and its bytes, then flushes once. On
/// error, tells whether any byte of the batch was accepted by the stream.
/// `stall`: how long one write or the flush may make no progress (needs a tokio runtime).
async fn write_batch<W: AsyncWrite + Unpin>(
    stream: &mut W,
    frames: &VecDeque<Vec<u8>>,
    buf: &mut Vec<u8>,
    stall: Option<Duration>,
) -> Result<u64, (bool, io::Error)> {
    let mut written = false;
    let mut total = 0u64;
    buf.clear();
    for frame in frames {
        let header = u32::try_from(frame.len())
            .expect("frame_max_bytes fits in u32")
            .to_be_bytes();
        if frame.len() >= CHUNK_BYTES {
            buf.extend_from_slice(&header);
            write_counted(stream, buf, &mut written, stall).await?;
            buf.clear();
            write_counted(stream, frame, &mut written, stall).await?;
        } else {
            if buf.len() + header.len() + frame.len() > CHUNK_BYTES {
                write_counted(stream, buf, &mut written, stall).await?;
                buf.clear();
            }
            buf.extend_from_slice(&header);
            buf.extend_from_slice(frame);
        }
        total += (header.len() + frame.len()) as u64;
    }
    if !buf.is_empty() {
        write_counted(stream, buf, &mut written, stall).await?;
        buf.clear();
    }
    within(stall, stream.flush())
        .await
        .map_err(|e| (written, e))?;
    Ok(total)
}

/// `io` if it completes within `stall` (when given), else a `TimedOut` error.
async fn within<T>(
    stall: Option<Duration>,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match stall {
        None => io.await,
        Some(d) => tokio::time::timeout(d, io).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress for {d:?}"),
            ))
        }),
    }
}

async fn write_counted<W: AsyncWrite + Unpin>(
    stream: &mut W,
    mut bytes: &[u8],
    written: &mut bool,
    stall: Option<Duration>,
) -> Result<(), (bool, io::Error)> {
    while !bytes.is_empty() {
        match within(stall, stream.write(bytes)).await {
            Ok(0) => return Err((*written, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                *written = true;
                bytes = &bytes[n..];
            }
            Err(e) => return Err((*written, e)),
        }
    }
    Ok(())
}

/// Takes inbound frame streams and runs a reader for each, one per peer. Runs until aborted
/// (when the event loop stops; its readers are aborted with it).
pub(crate) async fn accept_streams(
    links: Arc<Links>,
    mut incoming: mpsc::Receiver<(PeerId, Stream)>,
    events: mpsc::Sender<NetEvent>,
) {
    let mut readers: JoinSet<()> = JoinSet::new();
    // The reader of each peer, and the peer of each reader.
    let mut current: HashMap<PeerId, AbortHandle> = HashMap::new();
    let mut owner: HashMap<tokio::task::Id, PeerId> = HashMap::new();
    loop {
        tokio::select! {
            next = incoming.recv() => {
                let Some((from, stream)) = next else { return };
                if let Some(old) = current.remove(&from) {
                    debug!(peer = %from, "new frame stream replaces the older one");
                    old.abort();
                    owner.remove(&old.id());
                }
                let Some(peer) = links.peer(from) else {
                    debug!(peer = %from, "too many peers; frame stream refused");
                    add(&links.totals.streams_refused, 1);
                    continue;
                };
                let reader = run_reader(links.clone(), peer, stream, events.clone());
                let handle = readers.spawn(reader);
                owner.insert(handle.id(), from);
                current.insert(from, handle);
            }
            Some(done) = readers.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(from) = owner.remove(&id)
                    && current.get(&from).is_some_and(|h| h.id() == id)
                {
                    current.remove(&from);
                }
            }
        }
    }
}

/// Why a reader stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The stream ended or broke, or the node dropped its event receiver.
    Closed(io::Error),
    /// The peer broke the protocol: its stream is reset.
    Refused(String),
}

async fn run_reader(
    links: Arc<Links>,
    peer: Arc<Peer>,
    stream: Stream,
    events: mpsc::Sender<NetEvent>,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    match read_stream(&links, &peer, &mut reader, &events).await {
        ReadEnd::Closed(e) => debug!(peer = %peer.id, error = %e, "frame stream ended"),
        ReadEnd::Refused(reason) => {
            warn!(peer = %peer.id, %reason, "frame stream refused");
            add(&links.totals.streams_refused, 1);
            add(&peer.counters.streams_refused, 1);
        }
    }
    // Dropping a stream that is still open resets it.
    drop(reader);
}

async fn read_stream(
    links: &Links,
    peer: &Peer,
    reader: &mut BufReader<Stream>,
    events: &mpsc::Sender<NetEvent>,
) -> ReadEnd {
    let mut version = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_exact(&mut version)).await {
        Err(_) => return ReadEnd::Refused("no version byte in time".into()),
        Ok(Err(e)) => return ReadEnd::Closed(e),
        Ok(Ok(())) => {}
    }
    if version[0] != VERSION {
        return ReadEnd::Refused(format!(
            "frame stream version {} (this node speaks {VERSION})",
            version[0]
        ));
    }
    let answer = async {
        let stream = reader.get_mut();
        stream.write_all(&[VERSION]).await?;
        stream.flush().await
    };
    if let Err(e) = answer.await {
        return ReadEnd::Closed(e);
    }
    loop {
        let frame = match read_frame(reader, links.limits.frame_max_bytes).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return ReadEnd::Refused(e.to_string());
            }
            Err(e) => return ReadEnd::Closed(e),
        };
        let bytes = frame.len() as u64;
        for counters in [&links.totals, &peer.counters] {
            add(&counters.frames_received, 1);
            add(&counters.bytes_received, bytes);
        }
        // Waits while the node's event queue is full: this stream is then not read, and flow
        // control holds the sender back.
        let message = NetEvent::Message {
            from: peer.id,
            frame,
        };
        if events.send(message).await.is_err() {
            return ReadEnd::Closed(io::Error::other("the node dropped its event receiver"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::executor::block_on;
    use futures::io::Cursor;

    use super::*;

    fn frames(lens: &[usize]) -> VecDeque<Vec<u8>> {
        lens.iter()
            .enumerate()
            .map(|(i, len)| vec![i as u8; *len])
            .collect()
    }

    #[test]
    fn a_batch_is_length_prefixed_frames_in_order() {
        // Small frames share chunks; a frame of a chunk or more is written on its own.
        let batch = frames(&[0, 3, CHUNK_BYTES - 10, 20, CHUNK_BYTES + 1, 5]);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let bytes = block_on(write_batch(
            &mut Cursor::new(&mut out),
            &batch,
            &mut buf,
            None,
        ))
        .expect("written");
        let expected: usize = batch.iter().map(|f| 4 + f.len()).sum();
        assert_eq!(bytes, expected as u64);
        assert_eq!(out.len(), expected);
        let mut reader = Cursor::new(out);
        for frame in &batch {
            let back = block_on(read_frame(&mut reader, 1 << 20)).expect("a frame");
            assert_eq!(&back, frame);
        }
        let end = block_on(read_frame(&mut reader, 1 << 20)).expect_err("nothing more");
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Accepts `room` bytes, then fails; or, with `stall`, never makes progress again (writes
    /// and flushes) and never wakes its writer: what a yamux stream of a connection closed
    /// under it was seen to do.
    struct Limited {
        room: usize,
        stall: bool,
    }

    impl AsyncWrite for Limited {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.room == 0 {
                return if self.stall {
                    Poll::Pending
                } else {
                    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
                };
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// On a current-thread runtime the writers do not run while the test does not yield, so
    /// the queues hold exactly what was sent.
    #[tokio::test]
    async fn send_queues_are_bounded_per_peer_and_in_total_and_drops_are_counted() {
        let protocol = libp2p::StreamProtocol::new("/test/frames/1.0.0");
        let (_behaviour, opener, _inbound) = crate::streams::new(protocol, Duration::from_secs(5));
        let links = Links::new(
            Limits {
                frame_max_bytes: 100,
                peer_frames_max: 4,
                peer_bytes_max: 250,
                total_frames_max: 7,
                total_bytes_max: 10_000,
                peers_max: 3,
                open_timeout: Duration::from_secs(5),
            },
            opener,
        );
        let [a, b, c, d] = [peer(), peer(), peer(), peer()];
        let full = |peer| Err(NetError::QueueFull { peer });
        assert_eq!(
            links.send(a, vec![0; 101]),
            Err(NetError::FrameTooLarge { len: 101, max: 100 })
        );
        // Frames per peer.
        for _ in 0..4 {
            assert_eq!(links.send(a, vec![0; 10]), Ok(()));
        }
        assert_eq!(links.send(a, vec![0; 10]), full(a));
        // Bytes per peer.
        assert_eq!(links.send(b, vec![0; 100]), Ok(()));
        assert_eq!(links.send(b, vec![0; 100]), Ok(()));
        assert_eq!(links.send(b, vec![0; 100]), full(b));
        assert_eq!(links.send(b, vec![0; 50]), Ok(()));
        // Frames in total (7 queued), then peers (a, b, c have entries).
        assert_eq!(links.send(c, vec![0; 1]), full(c));
        assert_eq!(links.send(d, vec![0; 1]), full(d));

        let stats = links.stats();
        assert_eq!(stats.total.frames_dropped, 4);
        assert_eq!((stats.frames_queued, stats.bytes_queued), (7, 290));
        let of = |p: PeerId| stats.peers.iter().find(|s| s.peer == p).cloned();
        let (sa, sb, sc) = (of(a).expect("a"), of(b).expect("b"), of(c).expect("c"));
        assert_eq!(
            (sa.frames_queued, sa.bytes_queued, sa.counts.frames_dropped),
            (4, 40, 1)
        );
        assert_eq!(
            (sb.frames_queued, sb.bytes_queued, sb.counts.frames_dropped),
            (3, 250, 1)
        );
        assert_eq!((sc.frames_queued, sc.counts.frames_dropped), (0, 1));
        assert!(of(d).is_none());

        // Forgetting a peer drops its frames (counted failed) and makes room.
        links.forget(&a);
        let stats = links.stats();
        assert_eq!(stats.total.frames_failed, 4);
        assert_eq!((stats.frames_queued, stats.bytes_queued), (3, 250));
        assert_eq!(links.send(c, vec![0; 1]), Ok(()));
        assert_eq!(links.send(d, vec![0; 1]), Ok(()));

        // Stopped: everything queued fails, new frames are refused.
        links.stop();
        assert_eq!(links.send(b, vec![0; 1]), Err(NetError::Stopped));
        let stats = links.stats();
        assert_eq!(stats.total.frames_failed, 4 + 3 + 1 + 1);
        assert_eq!((stats.frames_queued, stats.bytes_queued), (0, 0));
        assert!(stats.peers.is_empty());
    }

    #[test]
    fn a_failed_write_tells_whether_any_byte_went_out() {
        let batch = frames(&[10, CHUNK_BYTES, 10]);
        let mut buf = Vec::new();
        for (room, written) in [(0, false), (1, true), (CHUNK_BYTES + 20, true)] {
            let result = block_on(write_batch(
                &mut Limited { room, stall: false },
                &batch,
                &mut buf,
                None,
            ));
            let (went_out, e) = result.expect_err("broken");
            assert_eq!(went_out, written, "room {room}");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        }
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_is_given_up() {
        let batch = frames(&[10, CHUNK_BYTES, 10]);
        let mut buf = Vec::new();
        let stall = Some(Duration::from_millis(20));
        // Stuck in a write before any byte, in a write after some, and in the flush.
        for (room, written) in [(0, false), (1, true), (CHUNK_BYTES + 20, true)] {
            let result =
                write_batch(&mut Limited { room, stall: true }, &batch, &mut buf, stall).await;
            let (went_out, e) = result.expect_err("given up");
            assert_eq!(went_out, written, "room {room}");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "room {room}");
            buf.clear();
        }
    }
}
