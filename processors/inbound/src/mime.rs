// Reads raw RFC 5322 / MIME bytes into unfolded, decoded headers and a flat list of decoded leaf
// parts. Tolerates any line ending, broken structure and truncation: it degrades, never fails.

use memchr::memmem;
use std::borrow::Cow;

/// Nested multiparts deeper than this are treated as opaque text (bounded work on hostile input).
const MAX_DEPTH: usize = 8;
/// More parts than this are ignored for the same reason.
const MAX_PARTS: usize = 64;

#[derive(Debug, Clone)]
pub struct Header {
    /// Lowercased field name.
    pub name: String,
    /// Unfolded value with RFC 2047 encoded words decoded.
    pub value: String,
}

#[derive(Debug, Clone, Default)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|h| h.name == name).map(|h| h.value.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |h| h.name == name).map(|h| h.value.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Part {
    /// Lowercased `type/subtype`; `text/plain` when absent or unreadable.
    pub content_type: String,
    /// Body after transfer decoding and charset conversion to UTF-8 (lossy).
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub headers: Headers,
    pub content_type: String,
    /// Top-level `report-type` parameter, lowercased (multipart/report).
    pub report_type: String,
    pub parts: Vec<Part>,
}

/// Converts CRLF and lone CR to LF so every later scan deals with one line ending.
pub fn normalize_newlines(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'\r', rest) {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        rest = &rest[i + 1..];
        if rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
    }
    out.extend_from_slice(rest);
    out
}

/// Parses an LF-normalized message.
pub fn parse(data: &[u8]) -> Message {
    let (headers, body) = split_headers(data);
    let ct_raw = headers.get("content-type").unwrap_or("text/plain").to_string();
    let (content_type, params) = parse_content_type(&ct_raw);
    let report_type = param(&params, "report-type").unwrap_or_default().to_ascii_lowercase();
    let mut parts = Vec::new();
    collect_parts(&headers, body, 0, &mut parts);
    Message { headers, content_type, report_type, parts }
}

/// Splits the header block from the body and parses the header fields.
pub fn split_headers(data: &[u8]) -> (Headers, &[u8]) {
    // Values borrow the input until a folded line forces a copy.
    let mut fields: Vec<(&[u8], Cow<'_, [u8]>)> = Vec::new();
    let mut pos = 0;
    let mut first = true;
    while pos < data.len() {
        let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i);
        let line = &data[pos..end];
        let next = (end + 1).min(data.len());
        if line.is_empty() {
            return (decode_fields(fields), &data[next..]);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = fields.last_mut() {
                let v = last.1.to_mut();
                v.push(b' ');
                v.extend_from_slice(trim_bytes(line));
                pos = next;
                continue;
            }
        }
        if first && line.starts_with(b"From ") {
            // mbox separator line, not a header field
            pos = next;
            first = false;
            continue;
        }
        first = false;
        match memchr::memchr(b':', line) {
            Some(c) if c > 0 && line[..c].iter().all(|&b| b > b' ' && b < 127) => {
                fields.push((&line[..c], Cow::Borrowed(trim_bytes(&line[c + 1..]))));
            }
            // A line that is no header field: the header block is broken, the body starts here.
            _ => return (decode_fields(fields), &data[pos..]),
        }
        pos = next;
    }
    (decode_fields(fields), &data[data.len()..])
}

fn decode_fields(fields: Vec<(&[u8], Cow<'_, [u8]>)>) -> Headers {
    Headers(
        fields
            .into_iter()
            .map(|(n, v)| Header {
                // Names were checked to be printable ASCII.
                name: String::from_utf8_lossy(n).to_ascii_lowercase(),
                value: decode_words(&v),
            })
            .collect(),
    )
}

pub fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Returns the lowercased media type and the raw parameter list.
pub fn parse_content_type(v: &str) -> (String, Vec<(String, String)>) {
    let mut it = split_params(v).into_iter();
    let mut ct = it.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !ct.contains('/') {
        ct = "text/plain".to_string();
    }
    let params = it
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    (ct, params)
}

/// Splits on `;` outside double quotes.
fn split_params(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, b) in v.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

pub fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn collect_parts(headers: &Headers, body: &[u8], depth: usize, out: &mut Vec<Part>) {
    if out.len() >= MAX_PARTS {
        return;
    }
    let (ct, params) = parse_content_type(headers.get("content-type").unwrap_or("text/plain"));
    let cte = headers.get("content-transfer-encoding").unwrap_or("").trim().to_ascii_lowercase();
    if ct.starts_with("multipart/") && depth < MAX_DEPTH {
        if let Some(boundary) = param(&params, "boundary").filter(|b| !b.is_empty()) {
            let pieces = split_multipart(body, boundary.as_bytes());
            if !pieces.is_empty() {
                for piece in pieces {
                    let (h, b) = split_headers(piece);
                    collect_parts(&h, b, depth + 1, out);
                }
                return;
            }
        }
    }
    // Attachments other than text or embedded messages carry nothing a classifier reads, so
    // they are not even decoded.
    let useful = ct.starts_with("text/") || ct.starts_with("message/") || ct.starts_with("multipart/");
    let text = if useful {
        let charset = param(&params, "charset").unwrap_or_default();
        match cte.as_str() {
            "base64" | "quoted-printable" => decode_charset(&charset, &decode_transfer(&cte, body)),
            _ => decode_charset(&charset, body),
        }
    } else {
        String::new()
    };
    out.push(Part { content_type: ct, text });
}

/// Returns the bodies between boundary delimiter lines. Without a closing delimiter (truncated
/// mail) the last part runs to the end.
fn split_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delim = Vec::with_capacity(boundary.len() + 3);
    delim.extend_from_slice(b"\n--");
    delim.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delim);
    let mut starts = Vec::new();
    // A delimiter may open the body without a preceding newline.
    if body.starts_with(&delim[1..]) {
        starts.push(0usize);
    }
    for i in finder.find_iter(body) {
        starts.push(i + 1);
    }
    let mut out = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let after = s + delim.len() - 1;
        if body[after..].starts_with(b"--") {
            break;
        }
        let content_start = memchr::memchr(b'\n', &body[after..]).map_or(body.len(), |i| after + i + 1);
        let content_end = starts.get(n + 1).map_or(body.len(), |&e| e.saturating_sub(1));
        if content_start <= content_end {
            out.push(&body[content_start..content_end]);
        }
        if out.len() >= MAX_PARTS {
            break;
        }
    }
    out
}

pub fn decode_transfer(cte: &str, body: &[u8]) -> Vec<u8> {
    match cte {
        "base64" => decode_base64(body),
        "quoted-printable" => decode_qp(body, false),
        _ => body.to_vec(),
    }
}

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Forgiving base64: skips whitespace and junk, stops at padding, keeps what decodes.
pub fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in input {
        if c == b'=' {
            break;
        }
        let Some(v) = b64_value(c) else { continue };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Quoted-printable; `header` selects the RFC 2047 "Q" variant where `_` is a space.
pub fn decode_qp(input: &[u8], header: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c == b'=' {
            if input.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                input.get(i + 1).and_then(|&b| hex_value(b)),
                input.get(i + 2).and_then(|&b| hex_value(b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            out.push(c);
        } else if header && c == b'_' {
            out.push(b' ');
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// Converts bytes in a declared charset to UTF-8; unknown charsets fall back to lossy UTF-8.
pub fn decode_charset(charset: &str, bytes: &[u8]) -> String {
    let label = charset.split('*').next().unwrap_or("").trim();
    if !label.is_empty() && !bytes.is_ascii() {
        if let Some(enc) = encoding_rs::Encoding::for_label(label.as_bytes()) {
            return enc.decode_without_bom_handling(bytes).0.into_owned();
        }
    }
    // ISO-2022-JP is 7-bit, so it must be decoded even when the bytes are all ASCII.
    if bytes.contains(&0x1b) {
        let enc = encoding_rs::Encoding::for_label(label.as_bytes()).unwrap_or(encoding_rs::ISO_2022_JP);
        return enc.decode_without_bom_handling(bytes).0.into_owned();
    }
    // Validation alone is much faster than the lossy decoder for the usual valid text.
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Decodes RFC 2047 encoded words; whitespace between adjacent encoded words is dropped.
pub fn decode_words(raw: &[u8]) -> String {
    // Most header values have no encoded word; a memchr scan answers that cheaply.
    if !memchr::memchr_iter(b'=', raw).any(|i| raw.get(i + 1) == Some(&b'?')) {
        return decode_charset("", raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let mut pending_ws = String::new();
    let mut last_was_word = false;
    while i < raw.len() {
        if raw[i] == b'=' && raw.get(i + 1) == Some(&b'?') {
            if let Some((text, len)) = encoded_word(&raw[i..]) {
                if !last_was_word {
                    out.push_str(&pending_ws);
                }
                pending_ws.clear();
                out.push_str(&text);
                last_was_word = true;
                i += len;
                continue;
            }
        }
        let c = raw[i];
        if c == b' ' || c == b'\t' {
            pending_ws.push(c as char);
            i += 1;
            continue;
        }
        out.push_str(&pending_ws);
        pending_ws.clear();
        let end = raw[i..]
            .iter()
            .position(|&b| b == b' ' || b == b'\t' || b == b'=')
            .map_or(raw.len(), |p| i + p.max(1));
        out.push_str(&decode_charset("", &raw[i..end]));
        last_was_word = false;
        i = end;
    }
    out.push_str(&pending_ws);
    out
}

/// Parses one `=?charset?enc?text?=` at the start of `s`; returns the text and bytes consumed.
fn encoded_word(s: &[u8]) -> Option<(String, usize)> {
    let q1 = 2 + memchr::memchr(b'?', &s[2..])?;
    let enc = *s.get(q1 + 1)?;
    if s.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let start = q1 + 3;
    let end = start + memchr::memchr_iter(b'?', &s[start..]).find(|&i| s.get(start + i + 1) == Some(&b'='))?;
    let charset = std::str::from_utf8(&s[2..q1]).ok()?;
    let payload = &s[start..end];
    let bytes = match enc.to_ascii_lowercase() {
        b'b' => decode_base64(payload),
        b'q' => decode_qp(payload, true),
        _ => return None,
    };
    let enc = encoding_rs::Encoding::for_label(charset.split('*').next()?.trim().as_bytes())
        .unwrap_or(encoding_rs::UTF_8);
    Some((enc.decode_without_bom_handling(&bytes).0.into_owned(), end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_normalized() {
        assert_eq!(normalize_newlines(b"a\r\nb\rc\n"), b"a\nb\nc\n");
    }

    #[test]
    fn encoded_words_join() {
        assert_eq!(decode_words(b"=?UTF-8?Q?Abwesenheits?= =?UTF-8?Q?notiz?= x"), "Abwesenheitsnotiz x");
        assert_eq!(decode_words(b"Re: =?ISO-8859-1?Q?R=E9ponse?="), "Re: R\u{e9}ponse");
    }

    #[test]
    fn truncated_multipart_keeps_last_part() {
        let m = parse(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhello");
        assert_eq!(m.parts.len(), 1);
        assert_eq!(m.parts[0].text, "hello");
    }
}
