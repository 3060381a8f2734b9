//! The client-to-server byte stream of one HTTP/2 connection, frame by frame: every header
//! block is decoded and encoded again with any `:authority` that is not a valid URI authority
//! replaced by `localhost`; every other frame passes through unchanged, as its bytes arrive.
//!
//! Sans-IO: [`Rewriter::process`] takes what has been read and appends what to pass on, so the
//! same code serves the socket adapter, the unit tests and the fuzz target.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What every HTTP/2 client sends first (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest frame payload a client may send: SETTINGS_MAX_FRAME_SIZE as the server behind us
/// advertises it (the protocol's initial value; neither h2 nor tonic raise it).
pub const MAX_FRAME: usize = 16_384;

/// The largest header block (HEADERS plus CONTINUATION fragments, as encoded) held at once.
/// gRPC requests carry a few hundred bytes of headers.
pub const MAX_BLOCK: usize = 64 * 1024;

/// The largest decoded header list (RFC 7541 sizes: name + value + 32 per field). Decoding can
/// expand a block (one byte names a 4 KiB table entry), so this is bounded separately. hyper's
/// own limit behind us is lower (16 KiB) and still answers larger lists with an error.
pub const MAX_LIST: usize = 64 * 1024;

/// SETTINGS_HEADER_TABLE_SIZE of the server behind us (the protocol's initial value): the most
/// dynamic table a client's encoder may use.
pub const TABLE_SIZE: usize = 4096;

/// What replaces an `:authority` that is not a valid URI authority. On a Unix socket the
/// authority names nothing; `localhost` is what kubelet and grpc-go (from driver v1.6) send.
const LOCAL: &[u8] = b"localhost";

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a connection is closed. None of these quotes the client's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The connection did not start with the HTTP/2 client preface (HTTP/1, TLS, anything else).
    #[error("not an HTTP/2 connection: the client preface is missing")]
    NotHttp2,
    /// A HEADERS or CONTINUATION frame is larger than the server allows.
    #[error("a header frame of {0} bytes is over the {MAX_FRAME}-byte frame size")]
    FrameTooLarge(usize),
    /// The header block spans more than [`MAX_BLOCK`] bytes.
    #[error("a header block is over {MAX_BLOCK} bytes")]
    BlockTooLarge,
    /// The decoded header list is over [`MAX_LIST`] bytes.
    #[error("a header list is over {MAX_LIST} bytes decoded")]
    ListTooLarge,
    /// A frame other than CONTINUATION on the same stream arrived inside a header block, or a
    /// CONTINUATION arrived outside one.
    #[error("a CONTINUATION frame is out of place")]
    Continuation,
    /// Padding or priority fields longer than the frame.
    #[error("a HEADERS frame's padding or priority is longer than the frame")]
    Padding,
    /// The header block is not valid HPACK.
    #[error("a header block is not valid HPACK")]
    Hpack,
}

/// The parsed 9-byte header of a frame whose payload is held whole (HEADERS, CONTINUATION).
#[derive(Debug, Clone, Copy)]
struct Head {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// A header block whose HEADERS frame did not end it.
struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragments: BytesMut,
}

enum State {
    /// Before the 24-byte client preface.
    Preface,
    /// Before a frame's 9-byte header.
    Head,
    /// Inside a frame that passes through: this many payload bytes still to copy.
    Copy(usize),
    /// Waiting for the whole payload of a HEADERS or CONTINUATION frame.
    Hold(Head),
}

/// Rewrites the client-to-server direction of one connection.
pub struct Rewriter {
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<Pending>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter for a new connection (expects the client preface first).
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            state: State::Preface,
            decoder,
            pending: None,
        }
    }

    /// Takes what it can from the front of `input` and appends the bytes to pass on to `out`.
    /// What is left in `input` is an incomplete preface, frame header or header frame: call
    /// again once more has been read. After an error the connection must be closed.
    pub fn process(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        loop {
            match self.state {
                State::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input[..n] != PREFACE[..n] {
                        return Err(RewriteError::NotHttp2);
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.state = State::Head;
                }
                State::Head => {
                    if input.len() < 9 {
                        return Ok(());
                    }
                    let head = Head {
                        length: usize::from(input[0]) << 16
                            | usize::from(input[1]) << 8
                            | usize::from(input[2]),
                        kind: input[3],
                        flags: input[4],
                        stream: u32::from_be_bytes([input[5], input[6], input[7], input[8]])
                            & 0x7fff_ffff,
                    };
                    let in_block = self.pending.is_some();
                    if matches!(head.kind, HEADERS | CONTINUATION) {
                        if head.length > MAX_FRAME {
                            return Err(RewriteError::FrameTooLarge(head.length));
                        }
                        if (head.kind == CONTINUATION) != in_block {
                            return Err(RewriteError::Continuation);
                        }
                        input.advance(9);
                        self.state = State::Hold(head);
                    } else {
                        if in_block {
                            return Err(RewriteError::Continuation);
                        }
                        out.extend_from_slice(&input[..9]);
                        input.advance(9);
                        self.state = State::Copy(head.length);
                    }
                }
                State::Copy(0) => self.state = State::Head,
                State::Copy(left) => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.state = State::Copy(left - n);
                }
                State::Hold(head) => {
                    if input.len() < head.length {
                        return Ok(());
                    }
                    let payload = input.split_to(head.length).freeze();
                    self.state = State::Head;
                    self.header_frame(head, payload, out)?;
                }
            }
        }
    }

    /// Adds one HEADERS or CONTINUATION frame to the block; writes the block out at its end.
    fn header_frame(
        &mut self,
        head: Head,
        mut payload: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        if head.kind == HEADERS {
            let padding = if head.flags & PADDED != 0 {
                if payload.is_empty() {
                    return Err(RewriteError::Padding);
                }
                usize::from(payload.get_u8())
            } else {
                0
            };
            let priority = if head.flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(RewriteError::Padding);
                }
                let mut fields = [0; 5];
                payload.copy_to_slice(&mut fields);
                Some(fields)
            } else {
                None
            };
            if padding > payload.len() {
                return Err(RewriteError::Padding);
            }
            payload.truncate(payload.len() - padding);
            self.pending = Some(Pending {
                stream: head.stream,
                flags: head.flags,
                priority,
                fragments: BytesMut::new(),
            });
        }
        let pending = self.pending.as_mut().ok_or(RewriteError::Continuation)?;
        if pending.stream != head.stream {
            return Err(RewriteError::Continuation);
        }
        if pending.fragments.len() + payload.len() > MAX_BLOCK {
            return Err(RewriteError::BlockTooLarge);
        }
        pending.fragments.extend_from_slice(&payload);
        if head.flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some(pending) = self.pending.take() else {
            return Err(RewriteError::Continuation);
        };
        let block = self.reencode(&pending.fragments)?;
        write_block(&pending, &block, out);
        Ok(())
    }

    /// Decodes a whole header block and encodes it again, every field a literal that the
    /// server does not index (so the server's table stays empty and nothing we change can put
    /// it out of step with the client's), `:authority` made valid.
    fn reencode(&mut self, fragments: &[u8]) -> Result<BytesMut, RewriteError> {
        let mut block = BytesMut::with_capacity(fragments.len() + 64);
        let mut listed = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(fragments, |name, value| {
                listed += name.len() + value.len() + 32;
                if listed > MAX_LIST {
                    too_large = true;
                }
                if too_large {
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !is_authority(&value) {
                    LOCAL
                } else {
                    &value
                };
                literal(&name, value, &mut block);
            })
            .map_err(|_| RewriteError::Hpack)?;
        if too_large {
            return Err(RewriteError::ListTooLarge);
        }
        Ok(block)
    }
}

/// Whether the server's HTTP/2 layer (h2, through the `http` crate) takes `value` as an
/// `:authority`.
fn is_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A "literal header field without indexing, new name" (RFC 7541 section 6.2.2), both strings
/// as plain octets.
fn literal(name: &[u8], value: &[u8], dst: &mut BytesMut) {
    dst.put_u8(0);
    string(name, dst);
    string(value, dst);
}

/// A string literal without Huffman coding: a 7-bit-prefix length, then the octets.
fn string(text: &[u8], dst: &mut BytesMut) {
    integer(text.len(), 7, dst);
    dst.extend_from_slice(text);
}

/// An HPACK integer with an `prefix`-bit prefix in a fresh byte (RFC 7541 section 5.1).
fn integer(mut value: usize, prefix: u8, dst: &mut BytesMut) {
    let max = (1usize << prefix) - 1;
    if value < max {
        dst.put_u8(value as u8);
        return;
    }
    dst.put_u8(max as u8);
    value -= max;
    while value >= 128 {
        dst.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    dst.put_u8(value as u8);
}

/// Writes a HEADERS frame (the original END_STREAM and priority, no padding) and as many
/// CONTINUATION frames as the new block needs.
fn write_block(pending: &Pending, block: &[u8], out: &mut BytesMut) {
    let priority = pending.priority.as_ref().map_or(&[][..], |p| &p[..]);
    let first = block.len().min(MAX_FRAME - priority.len());
    let (head, mut rest) = block.split_at(first);
    let mut flags = pending.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_head(
        priority.len() + head.len(),
        HEADERS,
        flags,
        pending.stream,
        out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_head(chunk.len(), CONTINUATION, flags, pending.stream, out);
        out.extend_from_slice(chunk);
    }
}

fn frame_head(length: usize, kind: u8, flags: u8, stream: u32, out: &mut BytesMut) {
    // invariant: length <= MAX_FRAME, below 2^24
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block as a client would send it: literals with incremental indexing, so a
    /// second request can refer to the first one's table entries.
    fn indexed_literal(name: &[u8], value: &[u8], dst: &mut BytesMut) {
        dst.put_u8(0x40);
        string(name, dst);
        string(value, dst);
    }

    fn request_block(authority: &[u8]) -> BytesMut {
        let mut block = BytesMut::new();
        block.put_u8(0x83); // :method POST
        block.put_u8(0x86); // :scheme http
        indexed_literal(b":path", b"/v1alpha1.CSIDriverProvider/Version", &mut block);
        indexed_literal(b":authority", authority, &mut block);
        indexed_literal(b"content-type", b"application/grpc", &mut block);
        block
    }

    fn frames(parts: &[(u8, u8, u32, &[u8])]) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(PREFACE);
        for (kind, flags, stream, payload) in parts {
            frame_head(payload.len(), *kind, *flags, *stream, &mut out);
            out.extend_from_slice(payload);
        }
        out
    }

    /// A frame as the server sees it: type, flags, stream, decoded header fields (header frames)
    /// or payload (others).
    type Seen = (u8, u8, u32, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

    /// Splits the rewritten bytes into frames and decodes every header block with a fresh
    /// decoder, as the server would.
    fn server_view(bytes: &[u8]) -> Vec<Seen> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut seen = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let length =
                usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + length];
            rest = &rest[9 + length..];
            assert!(length <= MAX_FRAME);
            if kind == HEADERS || kind == CONTINUATION {
                let skip = if flags & PRIORITY != 0 && kind == HEADERS {
                    5
                } else {
                    0
                };
                block.extend_from_slice(&payload[skip..]);
                if flags & END_HEADERS != 0 {
                    let fields = decoder.decode(&block).expect("valid HPACK");
                    block.clear();
                    seen.push((kind, flags, stream, fields, Vec::new()));
                }
            } else {
                seen.push((kind, flags, stream, Vec::new(), payload.to_vec()));
            }
        }
        seen
    }

    fn authority_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<&[u8]> {
        fields
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| &v[..])
    }

    fn run(input: &[u8]) -> Result<BytesMut, RewriteError> {
        let mut rewriter = Rewriter::new();
        let mut buf = BytesMut::from(input);
        let mut out = BytesMut::new();
        rewriter.process(&mut buf, &mut out)?;
        assert!(buf.is_empty(), "everything complete is consumed");
        Ok(out)
    }

    #[test]
    fn a_socket_path_becomes_localhost_and_a_valid_authority_stays() {
        for (sent, seen) in [
            (
                &b"/var/run/secrets-store-csi-providers/azure.sock"[..],
                &b"localhost"[..],
            ),
            (b"example.com:443", b"example.com:443"),
            (b"", b"localhost"),
            (b"\x00\xff\r\n garbage", b"localhost"),
            (b"localhost", b"localhost"),
            (b"[::1]:0", b"[::1]:0"),
        ] {
            let out = run(&frames(&[(HEADERS, END_HEADERS, 1, &request_block(sent))]))
                .expect("rewritten");
            let view = server_view(&out);
            assert_eq!(authority_of(&view[0].3), Some(seen), "sent {sent:?}");
            let names: Vec<&[u8]> = view[0].3.iter().map(|(n, _)| &n[..]).collect();
            assert_eq!(
                names,
                [
                    &b":method"[..],
                    b":scheme",
                    b":path",
                    b":authority",
                    b"content-type"
                ]
            );
        }
    }

    #[test]
    fn a_second_request_that_names_the_table_entry_is_rewritten_too() {
        let first = request_block(b"/run/kvmount.sock");
        // The client's table now holds content-type (62), :authority (63), :path (64).
        let second = [0x83, 0x86, 0xc0, 0xbf, 0xbe];
        let out = run(&frames(&[
            (HEADERS, END_HEADERS, 1, &first),
            (0x0, END_STREAM, 1, b"\0\0\0\0\0"),
            (HEADERS, END_HEADERS | END_STREAM, 3, &second),
        ]))
        .expect("rewritten");
        let view = server_view(&out);
        assert_eq!(authority_of(&view[0].3), Some(&b"localhost"[..]));
        assert_eq!(view[1].4, b"\0\0\0\0\0", "DATA passes unchanged");
        assert_eq!(authority_of(&view[2].3), Some(&b"localhost"[..]));
        assert_eq!(view[2].1 & END_STREAM, END_STREAM, "END_STREAM kept");
        assert_eq!(
            view[0].3[2], view[2].3[2],
            "the :path entry resolves to the same value"
        );
    }

    #[test]
    fn continuation_padding_and_priority_are_folded_into_one_block() {
        let block = request_block(b"/a/b.sock");
        let (a, b) = block.split_at(10);
        let mut padded = vec![3u8]; // pad length
        padded.extend_from_slice(&[0, 0, 0, 0, 16]); // priority: no dependency, weight 16
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        let out = run(&frames(&[
            (HEADERS, PADDED | PRIORITY, 5, &padded),
            (CONTINUATION, END_HEADERS, 5, b),
        ]))
        .expect("rewritten");
        let view = server_view(&out);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].1, PRIORITY | END_HEADERS);
        assert_eq!(view[0].2, 5);
        assert_eq!(authority_of(&view[0].3), Some(&b"localhost"[..]));
    }

    #[test]
    fn input_in_single_bytes_gives_the_same_output() {
        let input = frames(&[
            (0x4, 0, 0, &[0, 3, 0, 0, 0, 100]),
            (HEADERS, END_HEADERS, 1, &request_block(b"/x.sock")),
            (0x0, END_STREAM, 1, b"\0\0\0\0\0"),
        ]);
        let whole = run(&input).expect("rewritten");
        let mut rewriter = Rewriter::new();
        let mut out = BytesMut::new();
        let mut buf = BytesMut::new();
        for byte in input.iter() {
            buf.put_u8(*byte);
            rewriter.process(&mut buf, &mut out).expect("rewritten");
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn a_block_too_big_for_one_frame_is_split_into_continuations() {
        // 200 fields of 100 bytes, Huffman-free: about 21 KiB once re-encoded.
        let mut block = request_block(b"/x.sock");
        for i in 0..200 {
            literal(format!("x-{i:03}").as_bytes(), &[b'v'; 100], &mut block);
        }
        let (a, b) = block.split_at(block.len() / 2);
        let out = run(&frames(&[
            (HEADERS, 0, 1, a),
            (CONTINUATION, END_HEADERS, 1, b),
        ]))
        .expect("rewritten");
        let view = server_view(&out);
        assert_eq!(view[0].3.len(), 205);
        assert_eq!(authority_of(&view[0].3), Some(&b"localhost"[..]));
    }

    #[test]
    fn anything_but_http2_is_refused_at_its_first_bytes() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PRI * HTTP/1.1",
        ] {
            assert_eq!(run(input).err(), Some(RewriteError::NotHttp2));
        }
        // An incomplete but so far correct preface waits for more.
        let mut input = BytesMut::from(&PREFACE[..10]);
        let mut out = BytesMut::new();
        Rewriter::new()
            .process(&mut input, &mut out)
            .expect("waits");
        assert_eq!((input.len(), out.len()), (10, 0));
    }

    #[test]
    fn hostile_framing_closes_the_connection() {
        let block = request_block(b"x");
        let cases: Vec<(BytesMut, RewriteError)> = vec![
            (
                frames(&[(CONTINUATION, END_HEADERS, 1, &block)]),
                RewriteError::Continuation,
            ),
            (
                frames(&[(HEADERS, 0, 1, &block), (0x0, 0, 1, b"")]),
                RewriteError::Continuation,
            ),
            (
                frames(&[(HEADERS, 0, 1, &block), (CONTINUATION, END_HEADERS, 3, b"")]),
                RewriteError::Continuation,
            ),
            (
                frames(&[(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2])]),
                RewriteError::Padding,
            ),
            (
                frames(&[(HEADERS, PRIORITY | END_HEADERS, 1, &[0, 0])]),
                RewriteError::Padding,
            ),
            (
                frames(&[(
                    HEADERS,
                    END_HEADERS,
                    1,
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                )]),
                RewriteError::Hpack,
            ),
            // A table size update above the server's 4096.
            (
                frames(&[(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f, 0x82])]),
                RewriteError::Hpack,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(run(&input).err(), Some(want));
        }
        let mut big = BytesMut::from(PREFACE);
        frame_head(MAX_FRAME + 1, HEADERS, 0, 1, &mut big);
        assert_eq!(
            run(&big).err(),
            Some(RewriteError::FrameTooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn header_blocks_and_lists_are_bounded() {
        // Five CONTINUATIONs of 16 KiB: over MAX_BLOCK before any decoding.
        let chunk = vec![0x80u8 | 2; MAX_FRAME];
        let mut parts: Vec<(u8, u8, u32, &[u8])> = vec![(HEADERS, 0, 1, &chunk)];
        parts.extend(std::iter::repeat_n((CONTINUATION, 0, 1, &chunk[..]), 4));
        assert_eq!(
            run(&frames(&parts)).err(),
            Some(RewriteError::BlockTooLarge)
        );
        // One 4 KiB table entry named 40 times: a small block that decodes to 160 KiB.
        let mut block = BytesMut::new();
        indexed_literal(b"x", &[b'v'; 4000], &mut block);
        block.extend_from_slice(&[0xbe; 40]);
        assert_eq!(
            run(&frames(&[(HEADERS, END_HEADERS, 1, &block)])).err(),
            Some(RewriteError::ListTooLarge)
        );
    }
}
