//! Tracking tokens: compact, URL-safe, HMAC-SHA256-signed claims carried in open, click and
//! unsubscribe URLs, verified with the tenant's key alone (no database lookup).
//!
//! Layout (documented in the README so sending nodes can mint tokens themselves):
//! `base64url_nopad( 0x01 | kind | field* | mac16 )` where `kind` is `o`, `c` or `u`, each
//! field is a LEB128 length followed by UTF-8 bytes in the order key id, tenant, campaign,
//! variant, message id, recipient, link (of a click; the stream of the message in an
//! unsubscribe token, or empty), and `mac16` is the first 16 bytes of
//! HMAC-SHA256(signing key, every byte before it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TOKEN_VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// Longest field accepted but the link: what `POST /v1/events` accepts, so a hit carries
/// nothing an event could not.
pub const MAX_FIELD_LEN: usize = 1000;
/// Longest link of a click token, so a token stays a sane URL.
pub const MAX_LINK_LEN: usize = 4096;
/// Names of the fields, in their order in a token.
const FIELD_NAMES: [&str; 7] = ["key_id", "tenant", "campaign", "variant", "message_id", "recipient", "link"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    Click,
    Unsubscribe,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Open => b'o',
            Kind::Click => b'c',
            Kind::Unsubscribe => b'u',
        }
    }
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            b'o' => Some(Kind::Open),
            b'c' => Some(Kind::Click),
            b'u' => Some(Kind::Unsubscribe),
            _ => None,
        }
    }
    /// The URL path prefix of this kind: `/o/`, `/c/` or `/u/`.
    pub fn path_prefix(self) -> &'static str {
        match self {
            Kind::Open => "/o/",
            Kind::Click => "/c/",
            Kind::Unsubscribe => "/u/",
        }
    }
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub kind: Kind,
    pub key_id: String,
    pub tenant: String,
    pub campaign: String,
    pub variant: String,
    pub message_id: String,
    pub recipient: String,
    /// Destination of a click; empty for the other kinds.
    /// A click's destination; in an unsubscribe token, the stream the message was sent on
    /// (empty: every stream).
    pub link: String,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is not valid base64url")]
    Encoding,
    #[error("token is truncated or malformed")]
    Malformed,
    #[error("token version {0} is not supported")]
    Version(u8),
    #[error("{field} is longer than {max} bytes")]
    FieldTooLong { field: &'static str, max: usize },
    #[error("{0} contains a control character")]
    ControlCharacter(&'static str),
    #[error("a click's link must be an http:// or https:// URL without spaces")]
    BadLink,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signature does not match")]
    BadSignature,
    #[error("token is for a different kind of link")]
    WrongKind,
}

/// Mints the token for `claims`, signed with `key`.
pub fn mint(claims: &Claims, key: &[u8]) -> Result<String, TokenError> {
    check(claims)?;
    let mut buf = Vec::with_capacity(96 + claims.link.len());
    buf.push(TOKEN_VERSION);
    buf.push(claims.kind.byte());
    for field in fields(claims) {
        write_len(&mut buf, field.len());
        buf.extend_from_slice(field.as_bytes());
    }
    let mac = mac(key, &buf).finalize().into_bytes();
    buf.extend_from_slice(&mac[..MAC_LEN]);
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// Verifies `token` as a link of `expected` kind. `key_for(tenant, key_id)` returns the
/// tenant's signing key with that id, if it exists.
pub fn verify<'k>(
    token: &str,
    expected: Kind,
    key_for: impl FnOnce(&str, &str) -> Option<&'k [u8]>,
) -> Result<Claims, TokenError> {
    if token.len() > 4 * (6 * MAX_FIELD_LEN + MAX_LINK_LEN + 64) / 3 + 4 {
        return Err(TokenError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| TokenError::Encoding)?;
    if raw.len() < 2 + MAC_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, tag) = raw.split_at(raw.len() - MAC_LEN);
    if signed[0] != TOKEN_VERSION {
        return Err(TokenError::Version(signed[0]));
    }
    let kind = Kind::from_byte(signed[1]).ok_or(TokenError::Malformed)?;
    let mut rest = &signed[2..];
    let mut next = || -> Result<String, TokenError> {
        let len = read_len(&mut rest)?;
        if len > rest.len() || len > MAX_LINK_LEN {
            return Err(TokenError::Malformed);
        }
        let (field, tail) = rest.split_at(len);
        rest = tail;
        String::from_utf8(field.to_vec()).map_err(|_| TokenError::Malformed)
    };
    let claims = Claims {
        kind,
        key_id: next()?,
        tenant: next()?,
        campaign: next()?,
        variant: next()?,
        message_id: next()?,
        recipient: next()?,
        link: next()?,
    };
    if !rest.is_empty() {
        return Err(TokenError::Malformed);
    }
    let key = key_for(&claims.tenant, &claims.key_id).ok_or(TokenError::UnknownKey)?;
    mac(key, signed)
        .verify_truncated_left(tag)
        .map_err(|_| TokenError::BadSignature)?;
    // Checked after the signature so a forger learns nothing from the error.
    if claims.kind != expected {
        return Err(TokenError::WrongKind);
    }
    check(&claims)?;
    Ok(claims)
}

/// What every token's fields must be, minted here or by a sending node: no longer than an
/// event's fields, no control characters (they would reach the store, and a CR or LF in a
/// link breaks its redirect), and a click's link an http(s) URL.
fn check(claims: &Claims) -> Result<(), TokenError> {
    for (name, field) in FIELD_NAMES.iter().zip(fields(claims)) {
        let max = if *name == "link" { MAX_LINK_LEN } else { MAX_FIELD_LEN };
        if field.len() > max {
            return Err(TokenError::FieldTooLong { field: name, max });
        }
        if field.chars().any(char::is_control) {
            return Err(TokenError::ControlCharacter(name));
        }
    }
    let link = &claims.link;
    if claims.kind == Kind::Click
        && (!(link.starts_with("https://") || link.starts_with("http://")) || link.contains(char::is_whitespace))
    {
        return Err(TokenError::BadLink);
    }
    Ok(())
}

fn fields(c: &Claims) -> [&str; 7] {
    [&c.key_id, &c.tenant, &c.campaign, &c.variant, &c.message_id, &c.recipient, &c.link]
}

fn mac(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes keys of any length");
    mac.update(data);
    mac
}

fn write_len(buf: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

fn read_len(rest: &mut &[u8]) -> Result<usize, TokenError> {
    let mut len = 0usize;
    for shift in [0, 7, 14] {
        let (&byte, tail) = rest.split_first().ok_or(TokenError::Malformed)?;
        *rest = tail;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(len);
        }
    }
    Err(TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(kind: Kind) -> Claims {
        Claims {
            kind,
            key_id: "k1".into(),
            tenant: "acme".into(),
            campaign: "spring-sale".into(),
            variant: "B".into(),
            message_id: "<m1@mail.acme.test>".into(),
            recipient: "ana@gmail.com".into(),
            link: if kind == Kind::Click { "https://acme.test/shoes?a=1&b=ü".into() } else { String::new() },
        }
    }

    fn keys(tenant: &str, kid: &str) -> Option<&'static [u8]> {
        (tenant == "acme" && kid == "k1").then_some(KEY)
    }

    #[test]
    fn minted_tokens_verify_and_round_trip() {
        for kind in [Kind::Open, Kind::Click, Kind::Unsubscribe] {
            let token = mint(&claims(kind), KEY).unwrap();
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(verify(&token, kind, keys).unwrap(), claims(kind));
        }
    }

    #[test]
    fn every_altered_byte_is_rejected() {
        let token = mint(&claims(Kind::Click), KEY).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(bad);
            assert!(verify(&bad, Kind::Click, keys).is_err(), "flip at byte {i} verified");
        }
    }

    #[test]
    fn a_token_signed_with_another_key_is_rejected() {
        let token = mint(&claims(Kind::Click), b"not the tenant key").unwrap();
        assert_eq!(verify(&token, Kind::Click, keys), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_changed_link_is_rejected() {
        let mut forged = claims(Kind::Click);
        forged.link = "https://evil.test/".into();
        let good = mint(&claims(Kind::Click), KEY).unwrap();
        let bad = mint(&forged, b"guess").unwrap();
        assert!(verify(&good, Kind::Click, keys).is_ok());
        assert!(verify(&bad, Kind::Click, keys).is_err());
    }

    #[test]
    fn kinds_are_not_interchangeable() {
        let token = mint(&claims(Kind::Open), KEY).unwrap();
        assert_eq!(verify(&token, Kind::Click, keys), Err(TokenError::WrongKind));
    }

    #[test]
    fn fields_an_event_would_refuse_are_refused_when_minted_and_when_verified() {
        let with = |f: &dyn Fn(&mut Claims)| {
            let mut c = claims(Kind::Click);
            f(&mut c);
            c
        };
        let bad = [
            (with(&|c| c.link = "https://acme.test/a\r\nSet-Cookie: x=1".into()), TokenError::ControlCharacter("link")),
            (with(&|c| c.recipient = "ana\u{0}@gmail.com".into()), TokenError::ControlCharacter("recipient")),
            (with(&|c| c.campaign = "c".repeat(MAX_FIELD_LEN + 1)), TokenError::FieldTooLong { field: "campaign", max: MAX_FIELD_LEN }),
            (with(&|c| c.link = format!("https://acme.test/{}", "a".repeat(MAX_LINK_LEN))), TokenError::FieldTooLong { field: "link", max: MAX_LINK_LEN }),
            (with(&|c| c.link = "javascript:alert(1)".into()), TokenError::BadLink),
            (with(&|c| c.link = "https://acme.test/a b".into()), TokenError::BadLink),
        ];
        for (claims, error) in bad {
            assert_eq!(mint(&claims, KEY), Err(error.clone()), "{claims:?}");
            // A token minted elsewhere (a sending node's own code) with such a field: refused too.
            let mut raw = vec![TOKEN_VERSION, claims.kind.byte()];
            for field in fields(&claims) {
                write_len(&mut raw, field.len());
                raw.extend_from_slice(field.as_bytes());
            }
            let tag = mac(KEY, &raw).finalize().into_bytes();
            raw.extend_from_slice(&tag[..MAC_LEN]);
            // (A link longer than any token may carry is not even read as a field.)
            let expected = if matches!(error, TokenError::FieldTooLong { field: "link", .. }) { TokenError::Malformed } else { error };
            assert_eq!(verify(&URL_SAFE_NO_PAD.encode(raw), Kind::Click, keys), Err(expected));
        }
        let longest = with(&|c| c.campaign = "c".repeat(MAX_FIELD_LEN));
        assert_eq!(verify(&mint(&longest, KEY).unwrap(), Kind::Click, keys).unwrap(), longest);
    }

    #[test]
    fn garbage_never_panics() {
        for s in ["", "a", "====", "AQ", "!!!", &"A".repeat(100_000)] {
            assert!(verify(s, Kind::Open, keys).is_err());
        }
        let mut raw = vec![1u8, b'o', 0xff, 0xff, 0xff, 0x7f];
        raw.extend_from_slice(&[0; 16]);
        assert_eq!(verify(&URL_SAFE_NO_PAD.encode(raw), Kind::Open, keys), Err(TokenError::Malformed));
    }
}
