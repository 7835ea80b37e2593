//! Feeds arbitrary bytes to a server smux Mux (stream cap 3) in arbitrary splits, echoing
//! data and closing streams the peer closed. Nothing may panic; a dead Mux stays dead;
//! every frame the Decoder returns re-encodes to the bytes it came from; the Mux's output
//! decodes cleanly.
//!
//! Input: the first byte chooses the split pattern, the rest is the smux byte stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use session_agent::protocol::smux::{Decoder, Mux, MuxEvent, Role, MAX_BUFFERED};

const CAP: usize = 3;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunks = split(stream, seed);

    // The decoder alone, in one piece: frames re-encode to their input bytes.
    let mut d = Decoder::new();
    let mut input = stream;
    let mut whole = Vec::new();
    let mut used = 0;
    while let Ok(Some(f)) = d.decode(&mut input) {
        let mut re = BytesMut::new();
        f.encode_into(&mut re).expect("a decoded frame encodes");
        assert_eq!(&re[..], &stream[used..used + f.encoded_len()]);
        used += f.encoded_len();
        whole.push(f);
    }
    assert!(d.buffered() <= MAX_BUFFERED);

    // The same bytes split: the same frames, the same error.
    let mut d2 = Decoder::new();
    let mut split_frames = Vec::new();
    for chunk in &chunks {
        let mut input = *chunk;
        while let Ok(Some(f)) = d2.decode(&mut input) {
            split_frames.push(f);
        }
    }
    assert_eq!(split_frames, whole);
    assert_eq!(d2.error(), d.error());

    // The Mux.
    let mut m = Mux::new(Role::Server, CAP);
    let mut dead = None;
    for chunk in &chunks {
        match m.receive(chunk) {
            Ok(events) => {
                assert!(dead.is_none(), "a dead Mux stays dead");
                for e in events {
                    match e {
                        MuxEvent::Opened(sid) => assert!(m.is_open(sid)),
                        MuxEvent::Data(sid, bytes) => {
                            assert!(!bytes.is_empty());
                            assert!(m.write(sid, &bytes));
                        }
                        MuxEvent::Closed(sid) => {
                            assert!(m.peer_closed(sid));
                            assert!(m.close(sid));
                        }
                        MuxEvent::Refused(sid) => assert!(!m.close(sid)),
                    }
                }
            }
            Err(e) => {
                assert!(e.is_fatal());
                assert!(dead.is_none() || dead.as_ref() == Some(&e));
                assert_eq!(m.error(), Some(&e));
                dead = Some(e);
            }
        }
        assert!(m.open_streams() <= CAP);
        assert!(m.buffered_input() <= MAX_BUFFERED);
    }
    assert_eq!(dead.as_ref(), d.error());
    m.nop();

    // What the Mux wrote decodes cleanly.
    let out = m.take_output();
    let mut d3 = Decoder::new();
    let mut input = &out[..];
    let mut n = 0usize;
    while let Some(f) = d3.decode(&mut input).expect("Mux output decodes") {
        n += f.encoded_len();
    }
    assert_eq!(n, out.len());
});

/// Cuts `stream` into pieces of 1 to 97 bytes, in a pattern chosen by `seed`.
fn split(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = stream;
    let mut i = 0usize;
    while !rest.is_empty() {
        let len = if seed == 0 {
            rest.len()
        } else {
            1 + (usize::from(seed) * (i + 1) * 31) % 97
        };
        let (head, tail) = rest.split_at(len.min(rest.len()));
        pieces.push(head);
        rest = tail;
        i += 1;
    }
    pieces
}
