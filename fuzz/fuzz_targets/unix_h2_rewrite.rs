//! Fuzzes the `:authority` rewriter of kvmount's Unix sockets with whatever a client could send
//! after the HTTP/2 preface. It never panics; fed in one piece or in chunks of any size it gives
//! the same bytes and the same verdict; what it passes on is whole frames whose header blocks
//! decode with a fresh HPACK decoder (it never indexes) and carry only valid authorities.
#![no_main]

use bytes::BytesMut;
use kvmount_unix_h2::rewrite::{MAX_FRAME, PREFACE, RewriteError, Rewriter};
use libfuzzer_sys::fuzz_target;

fn feed(input: &[u8], chunk: usize) -> (BytesMut, Result<(), RewriteError>) {
    let mut rewriter = Rewriter::new();
    let mut held = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in input.chunks(chunk) {
        held.extend_from_slice(piece);
        if let Err(err) = rewriter.process(&mut held, &mut out) {
            return (out, Err(err));
        }
    }
    (out, Ok(()))
}

fuzz_target!(|data: &[u8]| {
    let Some((chunk, body)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(body);
    let whole = feed(&input, input.len());
    let chunked = feed(&input, usize::from(*chunk) + 1);
    assert_eq!(whole, chunked, "chunking changed the result");

    let (out, _) = whole;
    assert!(out.starts_with(PREFACE));
    let mut rest = &out[PREFACE.len()..];
    let mut block = Vec::new();
    let mut decoder = loona_hpack::Decoder::new();
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        if !matches!(kind, 0x1 | 0x9) {
            // Passed through as it arrived: possibly cut short by the end of the input.
            rest = &rest[(9 + length).min(rest.len())..];
            continue;
        }
        assert!(
            length <= MAX_FRAME && rest.len() >= 9 + length,
            "a whole header frame"
        );
        let skip = if kind == 0x1 && flags & 0x20 != 0 {
            5
        } else {
            0
        };
        block.extend_from_slice(&rest[9 + skip..9 + length]);
        rest = &rest[9 + length..];
        if flags & 0x4 != 0 {
            decoder
                .decode_with_cb(&block, |name, value| {
                    if &*name == b":authority" {
                        assert!(http::uri::Authority::try_from(&*value).is_ok());
                    }
                })
                .expect("a block we wrote decodes");
            block.clear();
        }
    }
});
