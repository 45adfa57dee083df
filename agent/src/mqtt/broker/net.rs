//! The broker's sockets: accepts connections, turns bytes into packets for the core and the
//! core's packets back into bytes. It runs on a thread and a single-threaded runtime of its
//! own, so that a busy broker never holds up supervision.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Disconnect, DisconnectReasonCode, Packet};
use rumqttc::v5::mqttbytes::Error as CodecError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{ConnId, Core, Effect, Input, Limits, Malformed};
use super::kept;
use crate::mqtt::OwnLogin;
use crate::throttle::{Throttle, Verdict};

/// Connections at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;

/// Of [`MAX_CONNECTIONS`], those only clients on this machine may take: the agent's own
/// connection, and a `respawnctl` run on the Pi, still get in while other machines hold the
/// rest (idle connections that never time out, with keep-alive 0).
const KEPT_FOR_LOOPBACK: usize = 16;

/// Whether a connection is taken while `open` others are.
fn admits(open: usize, from_this_machine: bool) -> bool {
    let limit = match from_this_machine {
        true => MAX_CONNECTIONS,
        false => MAX_CONNECTIONS - KEPT_FOR_LOOPBACK,
    };
    open < limit
}

/// Whether `peer`, which reached the address `local`, is this machine: loopback, or a peer at
/// the address it reached (an agent whose broker listens on one LAN address reports to it
/// from there).
fn this_machine(peer: std::net::IpAddr, local: Option<std::net::IpAddr>) -> bool {
    peer.is_loopback() || local == Some(peer)
}

/// Bytes waiting to be written to one client beyond the whole retained store (which a
/// subscription to `#` may send at once). A client that lets more pile up does not read: it
/// is disconnected (its session, if it has one, keeps its QoS 1 messages).
const QUEUE_SLACK: usize = 4 * 1024 * 1024;

/// How often the sessions it keeps are written down at most: at once after a change (a power
/// cut right after a client subscribed must not lose it), but a client that subscribes and
/// unsubscribes without end gets ten writes (each an fsync on the Pi's SD card) in ten
/// seconds, not one per packet.
const SAVES: u32 = 10;
const SAVES_WINDOW: Duration = Duration::from_secs(10);
/// When writes are held back, how soon the broker tries again.
const SAVE_RETRY: Duration = Duration::from_secs(1);
/// And however few the writes, the bytes they write: a file of many long filters, rewritten
/// ten times in ten seconds, would be megabytes a second on the SD card. After a write of N
/// bytes the next waits as long as N takes at this pace (a few KiB: a few milliseconds).
const SAVE_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;

/// Bytes waiting to be written to all clients together: beyond, the client with the most
/// waiting is disconnected as one that does not read, so that clients that do not read cannot
/// take the memory of the supervisor the broker runs in, whatever their number.
const MAX_UNSENT: usize = 96 * 1024 * 1024;

/// A write that takes longer than this means the client is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The MQTT 3 CONNACK with return code 1, "unacceptable protocol version".
const REFUSE_MQTT3: &[u8] = &[0x20, 0x02, 0x00, 0x01];

/// How long the agent waits at its exit for the broker to write what it keeps.
const KEEP_TIMEOUT: Duration = Duration::from_secs(6);

/// The running broker, to be stopped in good order: what waits for its kept sessions is
/// written for the next start.
#[must_use = "a broker dropped without `stop` keeps nothing of its queues"]
pub struct Keeper {
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

impl Keeper {
    /// Stops taking packets, writes the kept sessions with what waits for them, and returns
    /// once they are written (or after `KEEP_TIMEOUT`).
    pub async fn stop(self) {
        let (written, done) = oneshot::channel();
        let kept = match self.stop.send(written).await {
            Ok(()) => matches!(tokio::time::timeout(KEEP_TIMEOUT, done).await, Ok(Ok(()))),
            Err(_) => false,
        };
        if !kept {
            tracing::warn!(
                "embedded broker: it did not write what waits for its clients; it is lost"
            );
        }
    }
}

/// Starts the broker on `listen` in a thread of its own, with the sessions kept in
/// `sessions_file` by its previous run (and keeping them there for the next), and a client id
/// kept for the agent's own link; returns once it accepts connections.
pub fn start(
    listen: SocketAddr,
    sessions_file: PathBuf,
    reserved: Option<OwnLogin>,
) -> anyhow::Result<Keeper> {
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot host the broker on {listen}: the port is taken. If a broker already runs \
             there, remove [broker] from the configuration and set [mqtt] url = \"mqtt://{listen}\""
        ),
        Err(e) => bail!("cannot host the broker on {listen}: {e}"),
    };
    listener
        .set_nonblocking(true)
        .context("cannot set up the broker's socket")?;
    let (stop, stopped) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build();
            let served = runtime.map_err(anyhow::Error::from).and_then(|runtime| {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(
                        listener,
                        Limits::default(),
                        reserved,
                        &sessions_file,
                        stopped,
                    )
                    .await;
                    Ok(())
                })
            });
            if let Err(e) = served {
                tracing::error!(error = %e, "the embedded broker stopped");
            }
        })
        .context("cannot start the embedded broker")?;
    tracing::info!(%listen, "embedded MQTT broker listening (MQTT 5)");
    Ok(Keeper { stop })
}

/// What goes out on a connection.
enum Frame {
    /// Boxed: frames wait in a queue per client, and most are small.
    Packet(Box<Packet>),
    Raw(&'static [u8]),
}

/// What a queued packet holds of memory beyond its bytes on the wire: the packet itself, its
/// box and its place in the queue. Counted, or a flood of empty messages (ten bytes each on
/// the wire, some three hundred waiting) would take 30 times the memory the limits allow.
const FRAME_OVERHEAD: usize = std::mem::size_of::<Packet>() + 64;

impl Frame {
    /// The memory it holds while it waits to be written.
    fn cost(&self) -> usize {
        match self {
            Self::Packet(packet) => packet.size() + FRAME_OVERHEAD,
            Self::Raw(bytes) => bytes.len(),
        }
    }
}

struct Link {
    frames: mpsc::UnboundedSender<Frame>,
    /// Bytes queued for the writer and not yet written.
    queued: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// What a closed connection's writer may still send before it closes: a last DISCONNECT and
/// what little came before it.
const FAREWELL_BYTES: usize = 64 * 1024;

/// How long a stopping broker gives its clients' writers to tell them it goes.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells every client that the broker shuts down (DISCONNECT 0x8B), so that it says so
/// instead of a connection cut, and gives the writers a moment to send it.
async fn farewell(links: HashMap<ConnId, Link>, connected: &[ConnId]) {
    let mut tasks = Vec::new();
    for (conn, link) in links {
        // Only to a client with a CONNACK: MQTT forbids a DISCONNECT before it.
        if connected.contains(&conn) {
            let going = Disconnect::new(DisconnectReasonCode::ServerShuttingDown);
            let _ = (link.frames).send(Frame::Packet(Box::new(Packet::Disconnect(going))));
        }
        // The sender goes with the link: the writer sends what is queued, then its FIN.
        tasks.push((link.writer, link.reader));
    }
    // Each reader runs on until its client hangs up: a socket closed with unread bytes
    // would answer with a reset, which can overtake the DISCONNECT.
    let all = async {
        for (writer, reader) in &mut tasks {
            let _ = writer.await;
            let _ = reader.await;
        }
    };
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, all).await;
    for (_, reader) in tasks {
        reader.abort();
    }
}

/// Accepts and serves connections until `stop` asks it to keep what it has and end.
async fn serve(
    listener: TcpListener,
    limits: Limits,
    reserved: Option<OwnLogin>,
    sessions_file: &Path,
    mut stop: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let max_packet = limits.max_packet;
    let max_queued = limits.max_retained_bytes + QUEUE_SLACK;
    let mut core = Core::new(limits);
    if let Some(reserved) = reserved {
        core.reserve(reserved);
    }
    let kept = kept::take_back(sessions_file);
    core.restore(kept, Instant::now(), SystemTime::now());
    let mut kept_sessions = core.kept();
    let (inputs_tx, mut inputs) = mpsc::channel::<(ConnId, Input)>(256);
    let mut links: HashMap<ConnId, Link> = HashMap::new();
    let mut last_id: ConnId = 0;
    let mut refused: u64 = 0;
    let mut save_at: Option<Instant> = None;
    let mut saves = Throttle::new(SAVES, SAVES_WINDOW);
    let mut quiet_until = Instant::now();
    loop {
        let deadline = core.next_deadline();
        let effects = tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait instead of spinning.
                        tracing::warn!(error = %e, "embedded broker: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let local = stream.local_addr().ok().map(|a| a.ip());
                let from_this_machine = this_machine(peer.ip(), local);
                if !admits(links.len(), from_this_machine) {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(refused, open = links.len(), %peer, "embedded broker: as many connections as it takes; refusing more");
                    }
                    continue;
                }
                last_id += 1;
                links.insert(last_id, open(last_id, stream, inputs_tx.clone(), max_packet));
                core.handle(last_id, Input::Opened { from_this_machine }, Instant::now())
            }
            Some((conn, input)) = inputs.recv() => {
                // Only these can change which sessions are kept, and with what.
                let sessions_may_change = !matches!(
                    &input,
                    Input::Packet(packet)
                        if matches!(**packet, Packet::Publish(_) | Packet::PubAck(_) | Packet::PingReq(_))
                );
                let now = Instant::now();
                if sessions_may_change {
                    save_at.get_or_insert(now);
                }
                core.handle(conn, input, now)
            }
            () = sleep_until(deadline) => {
                let sessions = core.sessions.len();
                let effects = core.tick(Instant::now());
                // Sessions expired: the next start must not bring them back.
                if core.sessions.len() != sessions {
                    save_at.get_or_insert(Instant::now());
                }
                effects
            }
            () = sleep_until(save_at) => {
                save_at = None;
                let now_kept = core.kept();
                if now_kept != kept_sessions {
                    let now = Instant::now();
                    if now < quiet_until {
                        save_at = Some(quiet_until);
                        continue;
                    }
                    match saves.allow(now) {
                        Verdict::Allow { .. } => {
                            kept_sessions = now_kept;
                            let written = kept::save(sessions_file, &kept_sessions);
                            let pause = written as f64 / SAVE_BYTES_PER_SECOND;
                            quiet_until = now + Duration::from_secs_f64(pause);
                        }
                        Verdict::Refuse => save_at = Some(now + SAVE_RETRY),
                    }
                }
                continue;
            }
            Some(written) = stop.recv() => {
                // What clients said before the stop counts: an acknowledgement read already
                // must not bring its message back at the next start.
                while let Ok((conn, input)) = inputs.try_recv() {
                    let effects = core.handle(conn, input, Instant::now());
                    apply(&mut core, &mut links, effects, max_queued);
                }
                let kept = core.kept_with_queues(Instant::now(), SystemTime::now());
                kept::save(sessions_file, &kept);
                // Before the answer: the agent exits once it has it, and this thread with it.
                farewell(links, &core.connected()).await;
                let _ = written.send(());
                return;
            }
        };
        apply(&mut core, &mut links, effects, max_queued);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn open(
    conn: ConnId,
    stream: TcpStream,
    inputs: mpsc::Sender<(ConnId, Input)>,
    max_packet: u32,
) -> Link {
    // Request and reply would otherwise each wait for Nagle's algorithm (~40 ms).
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let (frames, outgoing) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write(write_half, outgoing, Arc::clone(&queued)));
    let reader = tokio::spawn(read(conn, read_half, inputs, max_packet));
    Link {
        frames,
        queued,
        reader,
        writer,
    }
}

/// Carries out the core's effects; a client too slow to take its packets is disconnected,
/// which the core is told, and what that causes is carried out in turn.
fn apply(
    core: &mut Core,
    links: &mut HashMap<ConnId, Link>,
    effects: Vec<Effect>,
    max_queued: usize,
) {
    let mut queue = VecDeque::from(effects);
    while let Some(effect) = queue.pop_front() {
        let (conn, frame) = match effect {
            Effect::Send(conn, packet) => (conn, Frame::Packet(Box::new(packet))),
            Effect::RefuseProtocol(conn) => (conn, Frame::Raw(REFUSE_MQTT3)),
            Effect::Close(conn) => {
                // Dropping the sender lets the writer finish what is queued (a last
                // DISCONNECT), then close; a backlog beyond that goes with the socket, or a
                // client that reads slowly would hold it outside every limit.
                if let Some(link) = links.remove(&conn) {
                    link.reader.abort();
                    if link.queued.load(Ordering::Relaxed) > FAREWELL_BYTES {
                        link.writer.abort();
                    }
                }
                continue;
            }
        };
        let Some(link) = links.get(&conn) else {
            continue;
        };
        let cost = frame.cost();
        link.queued.fetch_add(cost, Ordering::Relaxed);
        let backlogs = links
            .iter()
            .map(|(c, l)| (*c, l.queued.load(Ordering::Relaxed)));
        let not_reading = not_reading(backlogs, conn, max_queued);
        if not_reading != Some(conn) && link.frames.send(frame).is_err() {
            queue.extend(core.handle(conn, Input::Closed, Instant::now()));
        }
        if let Some(hog) = not_reading {
            tracing::warn!(
                conn = hog,
                "embedded broker: a client does not read what it is sent; disconnecting it"
            );
            // At once, with what waits for it: else each frame queued for it before its
            // close would find it over the limit again.
            if let Some(link) = links.remove(&hog) {
                link.reader.abort();
                link.writer.abort();
            }
            queue.extend(core.handle(hog, Input::Closed, Instant::now()));
        }
    }
}

/// The client to disconnect as one that does not read, now that a frame was queued for
/// `conn`, by what waits for each (`backlogs`): `conn` beyond its own `max_queued`, or, when
/// all together wait for more than [`MAX_UNSENT`], the one that has the most waiting.
fn not_reading(
    backlogs: impl Iterator<Item = (ConnId, usize)>,
    conn: ConnId,
    max_queued: usize,
) -> Option<ConnId> {
    let (mut unsent, mut most, mut own) = (0, None::<(usize, ConnId)>, 0);
    for (c, backlog) in backlogs {
        unsent += backlog;
        own = if c == conn { backlog } else { own };
        most = most.max(Some((backlog, c)));
    }
    match (own > max_queued, unsent > MAX_UNSENT) {
        (true, _) => Some(conn),
        (false, true) => most.map(|(_, c)| c),
        (false, false) => None,
    }
}

/// Reads packets and hands them to the core, which sets the pace.
async fn read(
    conn: ConnId,
    mut socket: OwnedReadHalf,
    inputs: mpsc::Sender<(ConnId, Input)>,
    max_packet: u32,
) {
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        loop {
            let input = match decode(&mut buffer, max_packet) {
                Ok(Some(packet)) => Input::Packet(Box::new(packet)),
                Ok(None) => break,
                Err(kind) => Input::Malformed(kind),
            };
            let last = matches!(input, Input::Malformed(_));
            if inputs.send((conn, input)).await.is_err() || last {
                return;
            }
        }
        match socket.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = inputs.send((conn, Input::Closed)).await;
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Takes the next whole packet off `buffer`; `None` until one is complete.
fn decode(buffer: &mut BytesMut, max_packet: u32) -> Result<Option<Packet>, Malformed> {
    // MQTT 5 3.14.2.1: a DISCONNECT with no remaining length means "normal disconnection"; the
    // codec, written for clients, wants a reason code.
    if buffer.starts_with(&[0xE0, 0x00]) {
        let _ = buffer.split_to(2);
        return Ok(Some(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        ))));
    }
    let before = buffer.len();
    match Packet::read(buffer, Some(max_packet)) {
        Ok(packet) => Ok(Some(packet)),
        // The frame is not all here yet.
        Err(CodecError::InsufficientBytes(_)) if buffer.len() == before => Ok(None),
        // A frame taken whole whose contents end early: waiting would wait for bytes that
        // belong to the packets after it.
        Err(CodecError::InsufficientBytes(_)) => Err(Malformed::Other),
        Err(CodecError::InvalidProtocolLevel(_) | CodecError::InvalidProtocol) => {
            Err(Malformed::OldProtocol)
        }
        Err(CodecError::PayloadSizeLimitExceeded { .. }) => Err(Malformed::TooLarge),
        Err(_) => Err(Malformed::Other),
    }
}

/// Writes what the core sends, several packets per write when they queue up.
async fn write(
    mut socket: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    queued: Arc<AtomicUsize>,
) {
    let mut buffer = BytesMut::with_capacity(4096);
    while let Some(frame) = frames.recv().await {
        let mut taken = frame.cost();
        encode(frame, &mut buffer);
        while buffer.len() < 64 * 1024 {
            match frames.try_recv() {
                Ok(frame) => {
                    taken += frame.cost();
                    encode(frame, &mut buffer);
                }
                Err(_) => break,
            }
        }
        let bytes: Bytes = buffer.split().freeze();
        match tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(&bytes)).await {
            Ok(Ok(())) => {
                queued.fetch_sub(taken, Ordering::Relaxed);
            }
            Ok(Err(_)) => return,
            Err(_) => {
                let after = WRITE_TIMEOUT.as_secs();
                tracing::warn!("embedded broker: a client took nothing of what it was sent for {after}s; disconnecting it");
                return;
            }
        }
    }
    let _ = socket.shutdown().await;
}

fn encode(frame: Frame, buffer: &mut BytesMut) {
    match frame {
        // Written by hand: rumqttc 0.25 encodes a DISCONNECT with a reason and no properties
        // with one byte more than its length says, which the client reads as a damaged
        // stream (a session taken over, a broker shutting down).
        Frame::Packet(packet) => match *packet {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties: None,
            }) if reason_code != DisconnectReasonCode::NormalDisconnection => {
                buffer.extend_from_slice(&[0xE0, 0x02, reason_code as u8, 0x00]);
            }
            packet => {
                if let Err(e) = packet.write(buffer, None) {
                    tracing::warn!(error = %e, "embedded broker: cannot encode a packet");
                }
            }
        },
        Frame::Raw(bytes) => buffer.extend_from_slice(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_packet_counts_the_memory_it_holds_not_only_its_bytes_on_the_wire() {
        use rumqttc::v5::mqttbytes::v5::Publish;
        use rumqttc::v5::mqttbytes::QoS;
        let empty = Publish::new("hog/a", QoS::AtMostOnce, Vec::new(), None);
        let frame = Frame::Packet(Box::new(Packet::Publish(empty)));
        let on_the_wire = 10;
        assert!(
            frame.cost() >= on_the_wire + std::mem::size_of::<Packet>(),
            "{}",
            frame.cost()
        );
        // 96 MiB of them are no more than some 350,000, whatever their size on the wire.
        assert!(MAX_UNSENT / frame.cost() < 400_000, "{}", frame.cost());
        assert_eq!(
            Frame::Raw(REFUSE_MQTT3).cost(),
            4,
            "a constant holds no memory of its own"
        );
    }

    #[test]
    fn the_client_with_the_most_unread_goes_when_all_together_have_too_much() {
        const MIB: usize = 1024 * 1024;
        let max = 68 * MIB;
        assert_eq!(
            not_reading([(1, 69 * MIB), (2, 0)].into_iter(), 1, max),
            Some(1)
        );
        assert_eq!(
            not_reading([(1, 10 * MIB), (2, 60 * MIB)].into_iter(), 1, max),
            None
        );
        let crowd = [(1, 10 * MIB), (2, 60 * MIB), (3, 40 * MIB)];
        assert_eq!(
            not_reading(crowd.into_iter(), 1, max),
            Some(2),
            "not the one sent to"
        );
    }

    #[test]
    fn the_last_connections_are_kept_for_this_machine() {
        let (lan, loopback) = (
            std::net::IpAddr::from([192, 168, 1, 7]),
            std::net::IpAddr::from([127, 0, 0, 1]),
        );
        let own = std::net::IpAddr::from([192, 168, 1, 5]);
        let lan_limit = MAX_CONNECTIONS - KEPT_FOR_LOOPBACK;
        let admits = |open, peer, local| admits(open, this_machine(peer, local));
        assert!(admits(lan_limit - 1, lan, Some(own)));
        assert!(!admits(lan_limit, lan, Some(own)));
        assert!(admits(lan_limit, loopback, Some(loopback)));
        assert!(
            admits(lan_limit, own, Some(own)),
            "from the address it listens on"
        );
        let ipv6 = std::net::Ipv6Addr::LOCALHOST.into();
        assert!(admits(MAX_CONNECTIONS - 1, ipv6, None));
        assert!(!admits(MAX_CONNECTIONS, loopback, Some(loopback)));
    }

    #[test]
    fn a_disconnect_with_a_reason_reads_back_whole() {
        for reason in [
            DisconnectReasonCode::ServerShuttingDown,
            DisconnectReasonCode::SessionTakenOver,
        ] {
            let mut buffer = BytesMut::new();
            let disconnect = Packet::Disconnect(Disconnect::new(reason));
            encode(Frame::Packet(Box::new(disconnect.clone())), &mut buffer);
            assert_eq!(decode(&mut buffer, 1024), Ok(Some(disconnect)));
            assert!(buffer.is_empty(), "{reason:?}: {buffer:?} left over");
        }
    }

    #[test]
    fn packets_are_taken_whole_and_a_bare_disconnect_is_a_normal_one() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[0xC0, 0x00, 0xE0]); // PINGREQ, half a DISCONNECT
        assert_eq!(
            decode(&mut buffer, 1024),
            Ok(Some(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)))
        );
        assert_eq!(decode(&mut buffer, 1024), Ok(None));
        buffer.extend_from_slice(&[0x00]);
        assert_eq!(
            decode(&mut buffer, 1024),
            Ok(Some(Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::NormalDisconnection
            ))))
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_whole_frame_whose_contents_end_early_is_malformed_not_awaited() {
        // A PUBLISH of topic "a" without its properties' length, then a PINGREQ.
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[0x30, 0x03, 0x00, 0x01, b'a', 0xC0, 0x00]);
        assert_eq!(decode(&mut buffer, 1024), Err(Malformed::Other));
        // Half of that PUBLISH's frame is only not here yet.
        let mut half = BytesMut::new();
        half.extend_from_slice(&[0x30, 0x03, 0x00]);
        assert_eq!(decode(&mut half, 1024), Ok(None));
        assert_eq!(half.len(), 3);
    }

    #[test]
    fn an_mqtt3_connect_and_an_oversized_packet_are_told_apart() {
        // CONNECT, protocol "MQTT" level 4.
        let mut mqtt3 = BytesMut::from(
            &[
                0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
            ][..],
        );
        assert_eq!(decode(&mut mqtt3, 1024), Err(Malformed::OldProtocol));
        let mut large = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x03][..]); // PUBLISH of 65 535 bytes
        assert_eq!(decode(&mut large, 1024), Err(Malformed::TooLarge));
        let mut garbage = BytesMut::from(&[0x00, 0x00][..]);
        assert_eq!(decode(&mut garbage, 1024), Err(Malformed::Other));
    }
}
