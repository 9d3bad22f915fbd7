// Deterministic fuzz-like test: mutated corpus and fixture messages (truncations, bit flips, byte
// insertions, spliced boundaries) must never panic, and the size limit must give a clear error.

use mailpipe_inbound::{classify, classify_with_limit, inspect_json, InboundError};
use std::path::PathBuf;

/// xorshift64*: reproducible mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut out = Vec::new();
    for dir in [root.join("../../../shared/corpus/bounces/messages"), root.join("tests/fixtures")] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "eml") && !e.path().to_string_lossy().contains(".cr") {
                out.extend(std::fs::read(e.path()).ok());
            }
        }
    }
    out.push(b"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b.c\nStatus: 5.".to_vec());
    out
}

const TOKENS: &[&[u8]] = &[b"\n--", b"=?utf-8?b?", b"?=", b"=\n", b"\n\n", b"<", b"@", b"5.1.", b"\r", b"Final-Recipient: rfc822;", b"\xff\xfe", b"\x1b$B"];

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut m = src.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(5) {
            0 => m.truncate(rng.below(m.len() + 1)),
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(m.len() + 1);
                m.splice(i..i, t.iter().copied());
            }
            3 if m.len() > 2 => {
                let a = rng.below(m.len());
                let b = (a + rng.below(200)).min(m.len());
                m.drain(a..b);
            }
            _ => {
                let i = rng.below(m.len() + 1);
                let byte = rng.next() as u8;
                m.insert(i, byte);
            }
        }
    }
    m
}

#[test]
fn mutated_messages_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let iterations = 6000;
    for _ in 0..iterations {
        let src = &seeds[rng.below(seeds.len())];
        let m = mutate(&mut rng, src);
        let _ = classify(&m);
        let _ = inspect_json("x", &m);
    }
}

#[test]
fn oversized_input_is_a_clear_error() {
    let big = vec![b'a'; 1024];
    assert_eq!(classify_with_limit(&big, 100), Err(InboundError::TooLarge { size: 1024, limit: 100 }));
    assert_eq!(classify(b"  \n\n"), Err(InboundError::Empty));
    let v = inspect_json("big.eml", &vec![b'x'; mailpipe_inbound::DEFAULT_MAX_BYTES + 1]);
    assert_eq!(v["kind"], "error");
}

#[test]
fn pathological_shapes_do_not_panic() {
    let mut deep = Vec::new();
    for i in 0..200 {
        deep.extend_from_slice(format!("Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n").as_bytes());
    }
    for input in [deep, vec![b'='; 10_000], vec![b'@'; 10_000], b"=?".repeat(5000), vec![0u8; 4096], b"\r".repeat(4096)] {
        let _ = classify(&input);
    }
}
