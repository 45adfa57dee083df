//! Brokers that misbehave, made by hand. One acknowledges out of order (clustered brokers do)
//! and then drops the connection: that must not leave the agent's link silent (rumqttc keeps a
//! publish held back for a packet-id collision across reconnects unless its state is reset).
//! Another drops the end marker of respawnctl's snapshot, as Mosquitto drops the end of one
//! too large for its queue: that must not end in "no answer".

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use respawn_tests::{TestAgent, TIMEOUT};

/// Reads one MQTT packet: its first byte and its body.
fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).ok()?;
    let (mut length, mut multiplier) = (0usize, 1usize);
    loop {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).ok()?;
        length += (byte[0] & 0x7f) as usize * multiplier;
        multiplier *= 128;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// The packet id of a QoS 1 PUBLISH body, or of a SUBSCRIBE body.
fn packet_id(kind: u8, header: u8, body: &[u8]) -> Option<[u8; 2]> {
    match kind {
        3 if (header >> 1) & 3 > 0 => {
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            Some([body[2 + topic_len], body[3 + topic_len]])
        }
        8 => Some([body[0], body[1]]),
        _ => None,
    }
}

/// Serves connections: the first acknowledges only its third publish and, once the client has
/// gone quiet (it holds a publish back for the collision), closes; later ones behave.
fn serve(listener: TcpListener, seen: mpsc::Sender<(usize, u8)>) {
    for (number, stream) in listener.incoming().enumerate() {
        let Ok(mut stream) = stream else { return };
        let first = number == 0;
        let mut publishes = 0;
        let mut acked_third = false;
        loop {
            // After the out-of-order ack, a client stuck on the collision sends nothing more:
            // a second of silence ends the first connection.
            stream
                .set_read_timeout((first && acked_third).then_some(Duration::from_secs(1)))
                .ok();
            let Some((header, body)) = read_packet(&mut stream) else {
                break;
            };
            let kind = header >> 4;
            if seen.send((number, kind)).is_err() {
                return;
            }
            let reply: Vec<u8> = match (kind, packet_id(kind, header, &body)) {
                // CONNACK; the first connection allows only three publishes in flight.
                (1, _) if first => vec![0x20, 6, 0, 0, 3, 0x21, 0, 3],
                (1, _) => vec![0x20, 3, 0, 0, 0],
                (8, Some(id)) => vec![0x90, 4, id[0], id[1], 0, 1],
                (3, Some(id)) if first => {
                    publishes += 1;
                    if publishes == 3 {
                        acked_third = true;
                        vec![0x40, 2, id[0], id[1]]
                    } else {
                        Vec::new()
                    }
                }
                (3, Some(id)) => vec![0x40, 2, id[0], id[1]],
                (12, _) => vec![0xd0, 0],
                _ => Vec::new(),
            };
            if !reply.is_empty() && stream.write_all(&reply).is_err() {
                break;
            }
        }
    }
}

#[test]
fn out_of_order_acks_and_a_dropped_connection_do_not_silence_the_link() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || serve(listener, tx));
    let processes: String = (0..6)
        .map(|i| format!("[[process]]\nname = \"p{i}\"\ncommand = [\"sleep\", \"1000\"]\n\n"))
        .collect();
    let _agent = TestAgent::start(&format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nkeep_alive = \"5s\"\n\n{processes}"
    ));
    // On the second connection the client must subscribe and publish again (a client stuck
    // on the collision only pings).
    let deadline = Instant::now() + TIMEOUT;
    let mut second = (false, false);
    while second != (true, true) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (connection, kind) = rx
            .recv_timeout(left)
            .expect("the agent subscribes and publishes again on its second connection");
        if connection >= 1 {
            second.0 |= kind == 8;
            second.1 |= kind == 3;
        }
    }
}

/// The number of topic filters in a SUBSCRIBE or UNSUBSCRIBE body (MQTT 5: packet id, no
/// properties, then each filter with its length, and for SUBSCRIBE its options byte).
fn filters_in(body: &[u8], with_options: bool) -> usize {
    let mut at = 3;
    let mut count = 0;
    while at + 2 <= body.len() {
        let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
        at += 2 + len + usize::from(with_options);
        count += 1;
    }
    count
}

/// Serves one respawnctl: it subscribes and publishes the end marker of its snapshot, and this
/// broker drops the first marker — as Mosquitto drops the end of a snapshot too large for its
/// queue — and passes on every later one.
fn drop_the_first_marker(listener: TcpListener, publishes: mpsc::Sender<()>) {
    let mut first_marker = true;
    answer(listener, |header, body| match header >> 4 {
        3 => {
            let _ = publishes.send(());
            match std::mem::take(&mut first_marker) {
                true => Vec::new(),
                false => [vec![header, body.len() as u8], body.to_vec()].concat(),
            }
        }
        _ => acknowledgement(header, body),
    });
}

/// Serves one connection: reads each packet and writes what `reply` makes of it.
fn answer(listener: TcpListener, mut reply: impl FnMut(u8, &[u8]) -> Vec<u8>) {
    let Ok((mut stream, _)) = listener.accept() else {
        return;
    };
    while let Some((header, body)) = read_packet(&mut stream) {
        let reply = reply(header, &body);
        if !reply.is_empty() && stream.write_all(&reply).is_err() {
            break;
        }
    }
}

/// What a well-behaved broker answers a CONNECT, SUBSCRIBE, UNSUBSCRIBE or PINGREQ with
/// (every subscription granted at QoS 0); nothing for other packets.
fn acknowledgement(header: u8, body: &[u8]) -> Vec<u8> {
    let ack = |kind: u8, with_options: bool| {
        let n = filters_in(body, with_options);
        [vec![kind, 3 + n as u8], body[..2].to_vec(), vec![0; 1 + n]].concat()
    };
    match header >> 4 {
        1 => vec![0x20, 3, 0, 0, 0],
        8 => ack(0x90, true),
        10 => ack(0xb0, false),
        12 => vec![0xd0, 0],
        _ => Vec::new(),
    }
}

#[test]
fn a_snapshot_whose_end_marker_was_dropped_still_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || drop_the_first_marker(listener, tx));
    let out = std::process::Command::new(respawn_tests::respawnctl_binary())
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}"), "status"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no agents found\n");
    assert!(rx.try_iter().count() >= 2, "the marker was sent again");
}

/// The topic of a PUBLISH body and its payload (MQTT 5, QoS 0: topic, properties, payload).
fn publish_parts(body: &[u8]) -> (String, Vec<u8>) {
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
    let properties_len = body[2 + topic_len] as usize;
    (topic, body[3 + topic_len + properties_len..].to_vec())
}

/// A QoS 0 PUBLISH packet (MQTT 5, no properties), retained when `retain`.
fn publish_packet(topic: &str, payload: &[u8], retain: bool) -> Vec<u8> {
    let length = 2 + topic.len() + 1 + payload.len();
    let header = 0x30 | u8::from(retain);
    let topic_len = (topic.len() as u16).to_be_bytes();
    let parts = [
        &[header, length as u8][..],
        &topic_len,
        topic.as_bytes(),
        &[0],
        payload,
    ];
    parts.concat()
}

/// Serves one session whose first end marker comes late: it is held back until the client
/// has sent it again (and that copy has ended the first reading), and delivered in the next
/// reading, after its subscription is confirmed and before its retained message `later/1`.
fn delay_the_first_marker(listener: TcpListener) {
    let mut held: Option<Vec<u8>> = None;
    let mut markers = 0;
    let mut subscribed_later = false;
    answer(listener, |header, body| match header >> 4 {
        8 => {
            let suback = acknowledgement(header, body);
            let later = String::from_utf8_lossy(body).contains("later/#");
            match (later && !subscribed_later, held.take()) {
                (true, Some(marker)) => {
                    subscribed_later = true;
                    [suback, marker, publish_packet("later/1", b"x", true)].concat()
                }
                (_, marker) => {
                    held = marker;
                    suback
                }
            }
        }
        3 => {
            let (topic, payload) = publish_parts(body);
            markers += 1;
            let echo = publish_packet(&topic, &payload, false);
            match markers {
                1 => {
                    held = Some(echo);
                    Vec::new()
                }
                _ => echo,
            }
        }
        _ => acknowledgement(header, body),
    });
}

/// The topics of what respawnctl's session reads, one snapshot after the other, under each
/// filter, from a broker that `serve` makes of one connection.
fn readings(serve: fn(TcpListener), filters: &[&str]) -> Vec<Vec<String>> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || serve(listener));
    let given = respawn_controller::settings::Given {
        broker: Some(format!("mqtt://127.0.0.1:{port}")),
        ..Default::default()
    };
    let settings = respawn_controller::settings::resolve(
        &given,
        |_| None,
        None,
        |p| std::fs::read_to_string(p),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut session = respawn_controller::session::Session::connect(&settings, false)
            .await
            .unwrap();
        let marker = "respawn/v1/_sync/test".to_owned();
        let mut readings = Vec::new();
        for filter in filters {
            let read = session.snapshot(&[filter.to_string()], &marker).await;
            readings.push(read.unwrap().into_iter().map(|m| m.topic).collect());
        }
        readings
    })
}

#[test]
fn a_late_end_marker_does_not_end_a_later_reading() {
    let read = readings(delay_the_first_marker, &["first/#", "later/#"]);
    assert!(read[0].is_empty());
    assert_eq!(
        read[1],
        ["later/1"],
        "the later reading ends at its own marker"
    );
}

/// Serves one session as a broker that works in the background (rmqtt, a Raft cluster): it
/// confirms a subscription to `slow/#` only after a while, with its first retained message,
/// and echoes each end marker at once. The other two retained messages come late: one right
/// after the first marker echoed once the subscription stands, one well after that. Replies
/// are written when due, in threads of their own, while packets are read.
fn subscribe_in_the_background(listener: TcpListener) {
    let Ok((stream, _)) = listener.accept() else {
        return;
    };
    let writer = std::sync::Arc::new(std::sync::Mutex::new(stream.try_clone().unwrap()));
    let write_after = |delay: Duration, bytes: Vec<u8>| {
        let writer = writer.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = writer.lock().unwrap().write_all(&bytes);
        });
    };
    let confirm_after = Duration::from_millis(400);
    let mut subscribed_at: Option<Instant> = None;
    let mut sent_late = false;
    let mut stream = stream;
    while let Some((header, body)) = read_packet(&mut stream) {
        let kind = header >> 4;
        let slow = kind == 8 && String::from_utf8_lossy(&body).contains("slow/#");
        if slow {
            let suback = acknowledgement(header, &body);
            let retained = publish_packet("slow/1", b"x", true);
            write_after(confirm_after, [suback, retained].concat());
            subscribed_at = Some(Instant::now() + confirm_after);
        } else if kind == 3 {
            let (topic, payload) = publish_parts(&body);
            let mut echo = publish_packet(&topic, &payload, false);
            let standing = subscribed_at.is_some_and(|at| Instant::now() >= at);
            if standing && !std::mem::replace(&mut sent_late, true) {
                echo.extend(publish_packet("slow/2", b"y", true));
                let last = publish_packet("slow/3", b"z", true);
                write_after(Duration::from_millis(250), last);
            }
            write_after(Duration::ZERO, echo);
        } else {
            write_after(Duration::ZERO, acknowledgement(header, &body));
        }
    }
}

#[test]
fn a_reading_waits_for_a_broker_that_subscribes_and_sends_in_the_background() {
    let read = readings(subscribe_in_the_background, &["slow/#"]);
    assert_eq!(
        read[0],
        ["slow/1", "slow/2", "slow/3"],
        "a marker counts once the subscription is confirmed, and what comes after it is read"
    );
}
