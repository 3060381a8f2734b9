//! Every Unix socket the daemon serves answers a gRPC request whatever its HTTP/2 `:authority`
//! is: the socket path (driver v1.5.x, grpc-java, kubelet's registration client), a
//! percent-encoded path (Python grpcio), empty, `localhost`, or random bytes; and refuses what is
//! not HTTP/2. The client here writes HTTP/2 frames by hand, because every library client
//! (tonic, h2) refuses to send an authority that is not a valid URI authority: that is the point.
//! The outside clients that really send these (the driver's own code at v1.5.4 and v1.6.0,
//! grpcio, grpc-go) are in tests/python/test_interop_clients.py.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use kvmount_proto::csi::{GetPluginInfoRequest, GetPluginInfoResponse};
use kvmount_proto::provider::{VersionRequest, VersionResponse};
use kvmount_tests::{NodeDaemon, record_summary};
use prost::Message;
use rand::{Rng, SeedableRng};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const VERSION: &str = "/v1alpha1.CSIDriverProvider/Version";
const PLUGIN_INFO: &str = "/csi.v1.Identity/GetPluginInfo";

/// What came back for one request.
#[derive(Debug, Default)]
struct Answer {
    status: Option<Vec<u8>>,
    grpc_status: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// One HTTP/2 connection, written and read frame by frame.
struct RawH2 {
    sock: UnixStream,
    next_stream: u32,
    decoder: loona_hpack::Decoder<'static>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal header field without indexing, plain octets (lengths below 127 * 128 here).
fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for text in [name, value] {
        if text.len() < 127 {
            out.push(text.len() as u8);
        } else {
            let rest = text.len() - 127;
            out.extend_from_slice(&[127, (rest % 128) as u8 | 0x80, (rest / 128) as u8]);
        }
        out.extend_from_slice(text);
    }
}

impl RawH2 {
    fn connect(path: &Path) -> Self {
        let mut sock = UnixStream::connect(path).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        sock.write_all(&hello).expect("preface");
        Self {
            sock,
            next_stream: 1,
            decoder: loona_hpack::Decoder::new(),
        }
    }

    fn read_frame(&mut self) -> Result<(u8, u8, u32, Vec<u8>), String> {
        let mut head = [0u8; 9];
        self.sock
            .read_exact(&mut head)
            .map_err(|e| format!("connection: {e}"))?;
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; length];
        self.sock
            .read_exact(&mut payload)
            .map_err(|e| format!("connection: {e}"))?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Ok((head[3], head[4], stream, payload))
    }

    /// One unary gRPC call with `authority` as the `:authority` bytes.
    fn call(&mut self, authority: &[u8], path: &str, message: &[u8]) -> Result<Answer, String> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        literal(b":path", path.as_bytes(), &mut block);
        literal(b":authority", authority, &mut block);
        literal(b"content-type", b"application/grpc", &mut block);
        literal(b"te", b"trailers", &mut block);
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        let mut out = frame(0x1, 0x4, stream, &block);
        out.extend(frame(0x0, 0x1, stream, &body));
        self.sock
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Answer::default();
        let mut block = Vec::new();
        loop {
            let (kind, flags, on, payload) = self.read_frame()?;
            match kind {
                0x4 if flags & 0x1 == 0 => self
                    .sock
                    .write_all(&frame(0x4, 0x1, 0, &[]))
                    .map_err(|e| format!("write: {e}"))?,
                0x6 if flags & 0x1 == 0 => self
                    .sock
                    .write_all(&frame(0x6, 0x1, 0, &payload))
                    .map_err(|e| format!("write: {e}"))?,
                0x7 => return Err("GOAWAY".into()),
                0x3 if on == stream => {
                    return Err(format!("RST_STREAM {:?}", payload));
                }
                0x0 if on == stream => {
                    answer.body.extend_from_slice(&payload);
                    if !payload.is_empty() {
                        let grant = (payload.len() as u32).to_be_bytes();
                        let mut update = frame(0x8, 0, 0, &grant);
                        update.extend(frame(0x8, 0, stream, &grant));
                        self.sock
                            .write_all(&update)
                            .map_err(|e| format!("write: {e}"))?;
                    }
                    if flags & 0x1 != 0 {
                        return Ok(answer);
                    }
                }
                0x1 | 0x9 if on == stream => {
                    let skip = if kind == 0x1 && flags & 0x20 != 0 {
                        5
                    } else {
                        0
                    };
                    block.extend_from_slice(&payload[skip..]);
                    if flags & 0x4 != 0 {
                        self.decoder
                            .decode_with_cb(&block, |name, value| match &*name {
                                b":status" => answer.status = Some(value.to_vec()),
                                b"grpc-status" => answer.grpc_status = Some(value.to_vec()),
                                _ => {}
                            })
                            .map_err(|e| format!("HPACK: {e:?}"))?;
                        block.clear();
                    }
                    if flags & 0x1 != 0 {
                        return Ok(answer);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The message of a gRPC body (one length-prefixed frame, uncompressed).
fn message(body: &[u8]) -> &[u8] {
    assert!(body.len() >= 5 && body[0] == 0, "one uncompressed message");
    &body[5..]
}

/// Calls the socket's cheapest method and checks the answer is a successful one from kvmount.
fn answered(client: &mut RawH2, csi: bool, authority: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(&authority[..authority.len().min(40)]).into_owned();
    let answer = if csi {
        client.call(
            authority,
            PLUGIN_INFO,
            &GetPluginInfoRequest {}.encode_to_vec(),
        )
    } else {
        let request = VersionRequest {
            version: "v1alpha1".into(),
        };
        client.call(authority, VERSION, &request.encode_to_vec())
    }
    .map_err(|e| format!("authority {shown:?}: {e}"))?;
    if answer.status.as_deref() != Some(b"200") || answer.grpc_status.as_deref() != Some(b"0") {
        return Err(format!("authority {shown:?}: answered {answer:?}"));
    }
    let body = message(&answer.body);
    let name = if csi {
        GetPluginInfoResponse::decode(body).map(|r| r.name)
    } else {
        VersionResponse::decode(body).map(|r| r.runtime_name)
    }
    .map_err(|e| format!("authority {shown:?}: {e}"))?;
    if name.is_empty() {
        return Err(format!("authority {shown:?}: no name in the answer"));
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

/// What real clients send, by name; each on both sockets, on one connection after another.
#[test]
fn every_authority_real_clients_send_is_answered_on_both_sockets() {
    let daemon = NodeDaemon::start(&[]);
    let provider = daemon.provider_socket.to_string_lossy().into_owned();
    let encoded = provider.trim_start_matches('/').replace('/', "%2F");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "driver v1.5.x: the socket path",
            provider.clone().into_bytes(),
        ),
        ("grpcio: the percent-encoded path", encoded.into_bytes()),
        (
            "grpc-java: unix: and the path",
            format!("unix:{provider}").into_bytes(),
        ),
        (
            "driver v1.6.0 and kubelet: localhost",
            b"localhost".to_vec(),
        ),
        ("empty", Vec::new()),
        ("an IPv6 literal", b"[::1]".to_vec()),
        ("an unclosed bracket", b"[garbage".to_vec()),
        ("spaces and controls", b"a b\tc\x01\x7f".to_vec()),
        ("bytes that are not UTF-8", vec![0xff, 0xfe, 0x80, 0x00]),
        ("2 KiB of slashes", vec![b'/'; 2048]),
    ];
    for socket in [&daemon.provider_socket, &daemon.csi_socket] {
        let csi = socket == &daemon.csi_socket;
        let mut shared = RawH2::connect(socket);
        for (name, authority) in &cases {
            // Once on a fresh connection, once on a connection that has answered others.
            let mut fresh = RawH2::connect(socket);
            for client in [&mut fresh, &mut shared] {
                if let Err(err) = answered(client, csi, authority) {
                    panic!("{name} on {}: {err}\n{}", socket.display(), daemon.output());
                }
            }
        }
    }
}

/// A hostile client: 10,000 requests with random authorities, on 50 connections across both
/// sockets, every one answered; the daemon is still up and serves a library client afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_authorities_are_all_answered() {
    let daemon = NodeDaemon::start(&[]);
    let sockets = [daemon.provider_socket.clone(), daemon.csi_socket.clone()];
    let seed: u64 = std::env::var("KVMOUNT_AUTHORITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for worker in 0..50u64 {
        let socket = sockets[worker as usize % 2].clone();
        workers.push(tokio::task::spawn_blocking(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ worker);
            let mut client = RawH2::connect(&socket);
            for _ in 0..200 {
                let len = match rng.random_range(0..10) {
                    0 => 0,
                    1..=7 => rng.random_range(1..64),
                    _ => rng.random_range(64..1500),
                };
                let authority: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                answered(&mut client, worker % 2 == 1, &authority)?;
            }
            Ok::<u64, String>(200)
        }));
    }
    let mut answered_total = 0;
    for worker in workers {
        match worker.await.expect("worker") {
            Ok(n) => answered_total += n,
            Err(err) => panic!("seed {seed}: {err}\n{}", daemon.output()),
        }
    }
    assert_eq!(answered_total, 10_000);
    assert!(alive(daemon.pid()), "the daemon is still running");
    let mut client =
        kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient::new(
            kvmount_provider::server::unix_channel(&daemon.provider_socket)
                .await
                .expect("connect"),
        );
    client
        .version(VersionRequest {
            version: "v1alpha1".into(),
        })
        .await
        .expect("a library client after the flood");
    record_summary(
        "authorities",
        &[
            ("requests", answered_total),
            ("millis", started.elapsed().as_millis() as u64),
        ],
    );
}

/// HTTP/1.1, TLS and other bytes that are not HTTP/2 get no answer: the connection closes after
/// at most the server's own HTTP/2 preface (SETTINGS, WINDOW_UPDATE, GOAWAY), which it sends
/// before reading anything.
#[test]
fn anything_but_http2_is_closed_without_an_answer() {
    let daemon = NodeDaemon::start(&[]);
    for socket in [&daemon.provider_socket, &daemon.csi_socket] {
        for hello in [
            &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
            b"POST /v1alpha1.CSIDriverProvider/Version HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        ] {
            let mut sock = UnixStream::connect(socket).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            sock.write_all(hello).expect("write");
            let mut got = Vec::new();
            match sock.read_to_end(&mut got) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("{}: the connection stays open: {e}", socket.display()),
            }
            let mut rest = &got[..];
            while !rest.is_empty() {
                assert!(rest.len() >= 9, "{}: a partial frame", socket.display());
                let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
                assert!(
                    matches!(rest[3], 0x4 | 0x7 | 0x8),
                    "{}: answered with a frame of type {} to {:?}",
                    socket.display(),
                    rest[3],
                    String::from_utf8_lossy(&hello[..hello.len().min(20)])
                );
                rest = &rest[(9 + length).min(rest.len())..];
            }
        }
    }
    assert!(alive(daemon.pid()));
}

/// A connection that starts a header block and never ends it, and one that floods CONTINUATION
/// frames, hold no other client up and are closed (the flood) within the block limit.
#[test]
fn a_stalled_or_flooding_header_block_holds_no_one_up() {
    let daemon = NodeDaemon::start(&[]);
    let socket = &daemon.provider_socket;
    // Stalled: HEADERS without END_HEADERS, then nothing.
    let mut stalled = UnixStream::connect(socket).expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    hello.extend(frame(0x1, 0, 1, &[0x83, 0x86]));
    stalled.write_all(&hello).expect("write");
    // Flooding: CONTINUATION frames of 16 KiB, far past the 64 KiB block limit.
    let mut flood = UnixStream::connect(socket).expect("connect");
    flood
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    flood.write_all(&hello).expect("write");
    let chunk = frame(0x9, 0, 1, &vec![0x82; 16_384]);
    let mut written = 0;
    while written < 1_000 && flood.write_all(&chunk).is_ok() {
        written += 1;
    }
    assert!(written < 1_000, "the flood was never cut off");
    // Others are served meanwhile.
    let mut client = RawH2::connect(socket);
    answered(&mut client, false, b"/run/x.sock").expect("served beside them");
    drop(stalled);
    assert!(alive(daemon.pid()));
}
