//! Hostile actors below HTTP/2, on plain TCP sockets:
//! - 2, idle pre-preface sockets: connections that send nothing, or half the HTTP/2 preface, and
//!   wait; each re-opened when the server closes it, with how long it lived;
//! - 4a, garbage: connections that send the preface and then random frames, or random bytes from
//!   the first byte; each waits for the server's answer (a GOAWAY, a close) for a bounded time.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::raw::{REASONS, Rng};
use super::tally::{Stop, Tally};
use crate::h2_client;

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The pause before an idle socket is re-opened, so a server that closes sockets at once costs at
/// most one connection a second per socket.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

/// How long a garbage connection waits for the server to close it: longer than the server's
/// default handshake timeout (10 s), so a server that only closes at that timeout is seen to.
const GARBAGE_WAIT: Duration = Duration::from_secs(15);

/// The most garbage connections waiting at once (rate × wait is well below it by default).
const GARBAGE_IN_FLIGHT: usize = 200;

/// What the server sent back is read up to this many bytes (it should be a few frames).
const READ_LIMIT: usize = 64 * 1024;

/// HTTP/2 frame type of GOAWAY.
const GOAWAY: u8 = 7;

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct SocketArgs {
    /// Idle pre-preface sockets kept open (half send nothing, half send half the preface); 0 turns
    /// the actor off.
    #[arg(long, default_value_t = 200)]
    pub idle_sockets: u32,
    /// Garbage connections opened per second, alternately: the preface then random frames, and
    /// random bytes from the start (0 turns the actor off).
    #[arg(long, default_value_t = 2.0)]
    pub garbage_rate: f64,
}

/// Runs the idle sockets until `stop`.
pub async fn idle(args: SocketArgs, addr: String, stop: Stop, tally: Tally) {
    let mut tasks = JoinSet::new();
    for socket in 0..args.idle_sockets {
        tasks.spawn(idle_socket(addr.clone(), socket % 2 == 1, stop.clone(), tally.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// One idle socket after another: connect, send nothing (or half the preface), wait.
async fn idle_socket(addr: String, half_preface: bool, mut stop: Stop, tally: Tally) {
    let kind = if half_preface { "half preface" } else { "nothing sent" };
    while !stop.is_set() {
        let mut socket = match h2_client::connect_tcp(&addr).await {
            Ok(socket) => socket,
            Err(error) => {
                tally.add(format!("{kind}: connect failed"), error.to_string());
                stop.sleep(REOPEN_PAUSE).await;
                continue;
            }
        };
        let opened = Instant::now();
        if half_preface && let Err(error) = socket.write_all(&PREFACE[..PREFACE.len() / 2]).await {
            tally.add_timed(format!("{kind}: write failed"), error.to_string(), opened.elapsed());
            stop.sleep(REOPEN_PAUSE).await;
            continue;
        }
        let ended = tokio::select! {
            _ = stop.wait() => None,
            heard = read_until_closed(&mut socket) => Some(heard),
        };
        match ended {
            None => tally.add_timed(format!("{kind}: still open at the end"), "", opened.elapsed()),
            Some(heard) => tally.add_timed(format!("{kind}: {}", heard.label()), heard.detail(), opened.elapsed()),
        }
        drop(socket);
        stop.sleep(REOPEN_PAUSE).await;
    }
}

/// What a socket heard from the server before it closed.
#[derive(Debug, Default, PartialEq)]
struct Heard {
    bytes: Vec<u8>,
    /// `None` for a clean close (EOF); the error for a reset.
    error: Option<String>,
}

impl Heard {
    fn label(&self) -> String {
        let close = if self.error.is_some() { "reset by the server" } else { "closed by the server" };
        match goaway_code(&self.bytes) {
            Some(code) => format!("GOAWAY {}, {close}", code_name(code)),
            None => close.to_owned(),
        }
    }

    fn detail(&self) -> String {
        let error = self.error.as_deref().unwrap_or("EOF");
        format!("{} bytes from the server, then {error}", self.bytes.len())
    }
}

/// Reads until the server closes the socket (or resets it), keeping up to [`READ_LIMIT`] bytes.
async fn read_until_closed(socket: &mut TcpStream) -> Heard {
    let mut heard = Heard::default();
    let mut buffer = [0u8; 4096];
    loop {
        match socket.read(&mut buffer).await {
            Ok(0) => return heard,
            Ok(n) => {
                let room = READ_LIMIT.saturating_sub(heard.bytes.len());
                heard.bytes.extend_from_slice(&buffer[..n.min(room)]);
            }
            Err(error) => {
                heard.error = Some(error.to_string());
                return heard;
            }
        }
    }
}

/// The error code of the first GOAWAY among the HTTP/2 frames in `bytes`, if there is one whole.
fn goaway_code(bytes: &[u8]) -> Option<u32> {
    let mut at = 0;
    while bytes.len() >= at + 9 {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let payload = at + 9;
        if bytes[at + 3] == GOAWAY && bytes.len() >= payload + 8 {
            return Some(u32::from_be_bytes(bytes[payload + 4..payload + 8].try_into().ok()?));
        }
        at = payload + length;
    }
    None
}

/// The HTTP/2 frames in `bytes` as `type/flags/stream/length` (hexadecimal type and flags), for a
/// detail: `4/00/0/0 1/25/5/12 …`.
fn describe_frames(bytes: &[u8]) -> String {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 9 {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream = u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]]);
        frames.push(format!("{:x}/{:02x}/{stream}/{length}", bytes[at + 3], bytes[at + 4]));
        at += 9 + length;
    }
    format!("sent the preface, then frames {}", frames.join(" "))
}

/// An HTTP/2 error code's name (RFC 9113, 7).
fn code_name(code: u32) -> String {
    REASONS.get(code as usize).map_or_else(|| format!("code {code}"), |(name, _)| (*name).to_owned())
}

/// Runs the garbage connections until `stop`; those still waiting then are counted as such.
pub async fn garbage(args: SocketArgs, addr: String, mut stop: Stop, tally: Tally, seed: u64) {
    if args.garbage_rate <= 0.0 {
        return;
    }
    let mut rng = Rng::new(seed);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.garbage_rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    for n in 0u64.. {
        tokio::select! {
            _ = stop.wait() => break,
            _ = ticks.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= GARBAGE_IN_FLIGHT {
            tally.add("skipped: too many waiting", "");
            continue;
        }
        let after_preface = n % 2 == 0;
        let bytes = if after_preface { frames_after_preface(&mut rng) } else { rng.bytes_between(1, 4096) };
        tasks.spawn(garbage_connection(addr.clone(), after_preface, bytes, stop.clone(), tally.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// The preface, an empty SETTINGS frame, then 1 to 20 frames with random types, flags, stream ids
/// and payloads (up to 64 bytes each, so they are read as frames rather than refused by size).
fn frames_after_preface(rng: &mut Rng) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for _ in 0..rng.between(1, 20) {
        let length = rng.between(0, 64) as usize;
        let kind = rng.between(0, 12) as u8;
        let flags = rng.next_u64() as u8;
        let stream = (rng.next_u64() as u32) & 0x7fff_ffff;
        bytes.extend(&(length as u32).to_be_bytes()[1..]);
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(rng.bytes(length));
    }
    bytes
}

async fn garbage_connection(addr: String, after_preface: bool, bytes: Vec<u8>, mut stop: Stop, tally: Tally) {
    let kind = if after_preface { "random frames after the preface" } else { "random bytes from the start" };
    let mut socket = match h2_client::connect_tcp(&addr).await {
        Ok(socket) => socket,
        Err(error) => {
            tally.add(format!("{kind}: connect failed"), error.to_string());
            return;
        }
    };
    let opened = Instant::now();
    // A server may close before reading everything: what it answered is still read below.
    let _ = socket.write_all(&bytes).await;
    let ended = tokio::select! {
        _ = stop.wait() => None,
        heard = tokio::time::timeout(GARBAGE_WAIT, read_until_closed(&mut socket)) => Some(heard),
    };
    match ended {
        None => tally.add_timed(format!("{kind}: still open at the end"), "", opened.elapsed()),
        Some(Err(_)) => tally.add_timed(
            format!("{kind}: still open after {GARBAGE_WAIT:?}"),
            // What was sent, so a connection the server keeps can be looked into.
            if after_preface { describe_frames(&bytes[PREFACE.len()..]) } else { "closed by the soak".to_owned() },
            opened.elapsed(),
        ),
        Some(Ok(heard)) => tally.add_timed(format!("{kind}: {}", heard.label()), heard.detail(), opened.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        bytes.extend([kind, 0, 0, 0, 0, 0]);
        bytes.extend(payload);
        bytes
    }

    #[test]
    fn finds_the_goaway_among_the_servers_frames() {
        let mut bytes = frame(4, &[0, 3, 0, 0, 4, 0]);
        bytes.extend(frame(8, &[0, 0, 0, 1]));
        assert_eq!(goaway_code(&bytes), None);
        bytes.extend(frame(GOAWAY, &[0, 0, 0, 0, 0, 0, 0, 1, b'x']));
        assert_eq!(goaway_code(&bytes), Some(1));
        let heard = Heard { bytes, error: None };
        assert_eq!(heard.label(), "GOAWAY PROTOCOL_ERROR, closed by the server");
        assert_eq!(Heard { bytes: vec![], error: Some("reset".into()) }.label(), "reset by the server");
        // A cut frame is not read past its end.
        assert_eq!(goaway_code(&frame(GOAWAY, &[0, 0, 0, 0, 0, 0])), None);
        assert_eq!(code_name(11), "ENHANCE_YOUR_CALM");
        assert_eq!(code_name(99), "code 99");
        let mut sent = frame(4, &[]);
        sent.extend(frame(8, &[0, 0, 0, 1]));
        assert_eq!(describe_frames(&sent), "sent the preface, then frames 4/00/0/0 8/00/0/4");
    }

    #[test]
    fn random_frames_follow_the_preface_and_a_settings_frame() {
        let bytes = frames_after_preface(&mut Rng::new(7));
        assert!(bytes.starts_with(PREFACE));
        assert_eq!(&bytes[PREFACE.len()..PREFACE.len() + 9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(bytes.len() > PREFACE.len() + 9 + 9);
    }
}
