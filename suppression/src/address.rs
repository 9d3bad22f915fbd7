//! Addresses compared as mailbox providers compare them: surrounding whitespace and angle
//! brackets ignored, the local part case-insensitive, the domain case-insensitive and in its
//! IDNA ASCII form (`bücher.example` and `xn--bcher-kva.example` are one domain).

/// A normalised address: `local@domain`, lowercase, the domain in ASCII (punycode).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

/// Longest address (RFC 5321: a path of 256 octets, less the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;

impl Address {
    /// Normalises `raw`, or says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Address, &'static str> {
        let mut s = raw.trim();
        if let Some(inner) = s.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
            s = inner.trim();
        }
        if s.is_empty() {
            return Err("is empty");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain spaces or control characters");
        }
        let Some((local, domain)) = s.rsplit_once('@') else { return Err("must be an email address (local@domain)") };
        if local.is_empty() || local.len() > MAX_LOCAL_LEN {
            return Err("must have a local part of 1 to 64 bytes before the @");
        }
        if local.contains(['<', '>', '@']) || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err("has an invalid local part");
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.is_empty() || !domain.contains('.') && !domain.starts_with('[') {
            return Err("must have a domain with a dot after the @");
        }
        let domain = if domain.starts_with('[') {
            // An address literal: [192.0.2.1] or [IPv6:...], compared as written, lowercased.
            if !domain.ends_with(']') {
                return Err("has an unclosed address literal");
            }
            domain.to_ascii_lowercase()
        } else {
            let ascii = match plain_domain(domain) {
                Some(plain) => plain,
                None => idna::domain_to_ascii_strict(domain).map_err(|_| "has a domain that is not a valid (IDNA) host name")?,
            };
            if ascii.is_empty() || ascii.split('.').any(str::is_empty) {
                return Err("has an empty domain label");
            }
            ascii
        };
        let address = format!("{}@{}", local.to_lowercase(), domain);
        if address.len() > MAX_ADDRESS_LEN {
            return Err("is longer than 254 bytes");
        }
        Ok(Address(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The index key of this address in `tenant`'s list: 96 bits of XXH3-128 over both, so
    /// ten million entries collide with a chance of about 10^-15.
    pub fn key(&self, tenant: &str) -> Key {
        let (t, a) = (tenant.as_bytes(), self.0.as_bytes());
        let len = t.len() + 1 + a.len();
        let mut stack = [0u8; 512];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        buf[..t.len()].copy_from_slice(t);
        buf[t.len() + 1..].copy_from_slice(a);
        let bytes = twox_hash::XxHash3_128::oneshot(buf).to_le_bytes();
        let mut key = [0u8; 12];
        key.copy_from_slice(&bytes[..12]);
        Key(key)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The ASCII form of a domain of plain letter-digit-hyphen labels, none of them punycode
/// (`xn--`) or otherwise reserved (`ab--`): its lowercase form, without the cost of IDNA
/// processing (most checked addresses). `None`: IDNA decides.
fn plain_domain(domain: &str) -> Option<String> {
    if !domain.is_ascii() || domain.len() > 253 {
        return None;
    }
    let lower = domain.to_ascii_lowercase();
    let plain = lower.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.get(2..4) != Some("--") && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    plain.then_some(lower)
}

/// The index key of an address of a tenant (see [`Address::key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 12]);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> String {
        Address::parse(s).unwrap().0
    }

    #[test]
    fn addresses_compare_as_mailbox_providers_compare_them() {
        assert_eq!(n("  <Ana.Lopez@GMail.COM> "), "ana.lopez@gmail.com");
        assert_eq!(n("ana@Bücher.Example"), "ana@xn--bcher-kva.example");
        assert_eq!(n("ana@xn--bcher-kva.example"), n("ANA@bücher.example"));
        assert_eq!(n("用户@例子.广告"), "用户@xn--fsqu00a.xn--4rr70v");
        assert_eq!(n("ana@example.com."), "ana@example.com");
        assert_eq!(n("a@[192.0.2.1]"), "a@[192.0.2.1]");
        assert_eq!(Address::parse("ana@a.com").unwrap().key("t1"), Address::parse("ANA@A.COM").unwrap().key("t1"));
        assert_ne!(Address::parse("ana@a.com").unwrap().key("t1"), Address::parse("ana@a.com").unwrap().key("t2"));
    }

    #[test]
    fn malformed_addresses_say_why() {
        for bad in ["", "  ", "ana", "@x.com", "ana@", "ana@localhost", "a b@x.com", "ana@x..com", "a\r\n@x.com", ".a@x.com", "ana@-x-.com\u{0}", "ana@exa mple.com", "<>"] {
            assert!(Address::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Address::parse(&format!("{}@x.com", "a".repeat(65))).is_err());
        assert!(Address::parse(&format!("a@{}.com", "b".repeat(250))).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]
        #[test]
        fn normalising_never_panics_and_twice_changes_nothing(raw in "\\PC{0,80}") {
            if let Ok(a) = Address::parse(&raw) {
                prop_assert_eq!(Address::parse(a.as_str()), Ok(a.clone()));
                prop_assert!(a.as_str().len() <= MAX_ADDRESS_LEN);
            }
        }

        #[test]
        fn the_plain_path_agrees_with_idna(domain in "[a-zA-Z0-9-]{1,12}(\\.[a-zA-Z0-9-]{1,12}){1,3}") {
            if let Some(plain) = plain_domain(&domain) {
                prop_assert_eq!(Ok(plain), idna::domain_to_ascii_strict(&domain).map_err(|_| ()));
            }
        }

        #[test]
        fn spellings_of_one_address_are_one_address(local in "[a-zA-Z0-9._%+-]{1,20}", domain in "[a-zA-Z0-9]{1,10}\\.(com|de|xn--p1ai|рф)", pad in " {0,3}") {
            let Ok(plain) = Address::parse(&format!("{local}@{domain}")) else { return Ok(()) };
            let dressed = format!("{pad}<{}@{}>{pad}", local.to_uppercase(), domain.to_uppercase());
            prop_assert_eq!(Address::parse(&dressed), Ok(plain));
        }
    }
}
