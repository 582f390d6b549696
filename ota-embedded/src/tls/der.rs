//! The few fields of an X.509 certificate the verifier reads itself: issuer, subject,
//! validity and DNS names. A minimal DER walker (definite lengths only, as DER requires);
//! anything unexpected is `None`, which refuses the certificate.

/// One DER element: `(tag, contents, rest)`.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 3 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0, |len, &b| (len << 8) | usize::from(b))
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The element at the front of `input` if it has `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = element(input)?;
    (found == tag).then_some((contents, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// The parts of a TBSCertificate the verifier reads.
struct Tbs<'a> {
    issuer: &'a [u8],
    validity: &'a [u8],
    subject: &'a [u8],
    extensions: &'a [u8],
}

fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    if let Some((_, rest)) = expect(tbs, 0xA0) {
        tbs = rest; // version
    }
    let (_, rest) = expect(tbs, 0x02)?; // serial number
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, rest) = expect(rest, SEQUENCE)?;
    let (_, mut rest) = expect(rest, SEQUENCE)?; // subject public key
    let mut extensions: &[u8] = &[];
    while !rest.is_empty() {
        let (tag, contents, after) = element(rest)?;
        if tag == 0xA3 {
            extensions = expect(contents, SEQUENCE)?.0;
        }
        rest = after;
    }
    Some(Tbs {
        issuer,
        validity,
        subject,
        extensions,
    })
}

/// The encoded issuer name (to find the CA that signed a certificate).
pub(crate) fn issuer(cert: &[u8]) -> Option<&[u8]> {
    Some(tbs(cert)?.issuer)
}

/// The encoded subject name.
pub(crate) fn subject(cert: &[u8]) -> Option<&[u8]> {
    Some(tbs(cert)?.subject)
}

/// Validity dates in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: u64,
    pub(crate) not_after: u64,
}

pub(crate) fn validity(cert: &[u8]) -> Option<Validity> {
    let validity = tbs(cert)?.validity;
    let (tag, before, rest) = element(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, _) = element(rest)?;
    let not_after = time(tag, after)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<u64> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: core::ops::Range<usize>| {
        digits
            .get(range)
            .map(|d| d.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = number(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let month = number(rest..rest + 2)?;
    let day = number(rest + 2..rest + 4)?;
    let hour = number(rest + 4..rest + 6)?;
    let minute = number(rest + 6..rest + 8)?;
    let second = number(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second.min(60))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

/// Whether the certificate names `host`. An IP address matches only the certificate's IP
/// address entries; a DNS name its DNS entries if it has any, else its common name (RFC 6125
/// §6.4.4). A wildcard stands for one whole leftmost label.
pub(crate) fn names_match(cert: &[u8], host: &str) -> bool {
    let Some(tbs) = tbs(cert) else {
        return false;
    };
    if let Ok(ip) = host.parse::<core::net::IpAddr>() {
        let mut entries = alt_names(tbs.extensions, IP_ADDRESS);
        return match ip {
            core::net::IpAddr::V4(v4) => entries.any(|entry| entry == v4.octets()),
            core::net::IpAddr::V6(v6) => entries.any(|entry| entry == v6.octets()),
        };
    }
    let mut any_dns_name = false;
    for name in alt_names(tbs.extensions, DNS_NAME) {
        any_dns_name = true;
        if name_matches(name, host.as_bytes()) {
            return true;
        }
    }
    !any_dns_name && common_name(tbs.subject).is_some_and(|cn| name_matches(cn, host.as_bytes()))
}

/// A name the certificate carries (its first DNS name, else its common name), for a verifier
/// that insists on matching one after [`names_match`] decided.
pub(crate) fn some_name(cert: &[u8]) -> Option<&[u8]> {
    let tbs = tbs(cert)?;
    let first = alt_names(tbs.extensions, DNS_NAME).next();
    first.or_else(|| common_name(tbs.subject))
}

/// Whether the certificate says it is a CA (basicConstraints with `cA` true), i.e. may sign
/// other certificates.
pub(crate) fn is_ca(cert: &[u8]) -> bool {
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1D, 0x13]; // 2.5.29.19
    let Some(tbs) = tbs(cert) else {
        return false;
    };
    let mut rest = tbs.extensions;
    while let Some((extension, after)) = expect(rest, SEQUENCE) {
        rest = after;
        let Some((oid, mut value)) = expect(extension, 0x06) else {
            continue;
        };
        if oid != BASIC_CONSTRAINTS {
            continue;
        }
        if let Some((_, after)) = expect(value, 0x01) {
            value = after; // critical
        }
        let constraints = expect(value, 0x04).and_then(|(octets, _)| expect(octets, SEQUENCE));
        // cA BOOLEAN DEFAULT FALSE: DER encodes true as 0xFF.
        return constraints
            .and_then(|(fields, _)| expect(fields, 0x01))
            .is_some_and(|(flag, _)| flag == [0xFF]);
    }
    false
}

const DNS_NAME: u8 = 0x82;
const IP_ADDRESS: u8 = 0x87;

/// The subjectAltName entries of one kind (`DNS_NAME`, `IP_ADDRESS`).
fn alt_names(extensions: &[u8], kind: u8) -> impl Iterator<Item = &[u8]> {
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11]; // 2.5.29.17
    let mut names: &[u8] = &[];
    let mut rest = extensions;
    while let Some((extension, after)) = expect(rest, SEQUENCE) {
        rest = after;
        let Some((oid, mut value)) = expect(extension, 0x06) else {
            continue;
        };
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if let Some((_, after)) = expect(value, 0x01) {
            value = after; // critical
        }
        if let Some((octets, _)) = expect(value, 0x04) {
            names = expect(octets, SEQUENCE).map_or(&[], |(seq, _)| seq);
        }
    }
    core::iter::from_fn(move || loop {
        let (tag, contents, after) = element(names)?;
        names = after;
        if tag == kind {
            return Some(contents);
        }
    })
}

/// The last common name (2.5.4.3) of a subject.
fn common_name(subject: &[u8]) -> Option<&[u8]> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let mut found = None;
    let mut rest = subject;
    while let Some((set, after)) = expect(rest, SET) {
        rest = after;
        let Some((pair, _)) = expect(set, SEQUENCE) else {
            continue;
        };
        if let Some((oid, value)) = expect(pair, 0x06) {
            if oid == COMMON_NAME {
                found = element(value).map(|(_, text, _)| text);
            }
        }
    }
    found
}

/// `pattern` is `host` (ASCII case-insensitive) or `*.` + `host` without its first label.
fn name_matches(pattern: &[u8], host: &[u8]) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix(b"*.") else {
        return false;
    };
    // The wildcard must not cover a public suffix alone ("*.com").
    if !suffix.contains(&b'.') {
        return false;
    }
    match host.iter().position(|&b| b == b'.') {
        Some(dot) => dot > 0 && host[dot + 1..].eq_ignore_ascii_case(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_to_unix_seconds() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"280128120000Z"), Some(1_832_673_600));
        assert_eq!(time(0x18, b"20530101000000Z"), Some(2_619_302_400));
        assert_eq!(time(0x17, b"2801281200Z"), None, "too short");
        assert_eq!(time(0x17, b"281328120000Z"), None, "month 13");
        assert_eq!(time(0x18, b"2053010100000Z"), None);
    }

    #[test]
    fn wildcards_cover_one_leftmost_label() {
        let host = b"a1pk.iot-as-mqtt.cn-shanghai.aliyuncs.com";
        assert!(name_matches(
            b"*.iot-as-mqtt.cn-shanghai.aliyuncs.com",
            host
        ));
        assert!(name_matches(
            b"A1PK.iot-as-mqtt.cn-shanghai.aliyuncs.com",
            host
        ));
        assert!(!name_matches(b"*.cn-shanghai.aliyuncs.com", host));
        assert!(!name_matches(b"*.com", b"example.com"));
        assert!(!name_matches(b"*.example.com", b".example.com"));
        assert!(!name_matches(b"localhost", b"otherhost"));
    }

    #[test]
    fn lengths_beyond_the_input_are_refused() {
        assert_eq!(element(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(element(&[0x30, 0x82, 0x00]), None);
        assert_eq!(element(&[0x30, 0x80]), None, "indefinite length is not DER");
        assert_eq!(
            element(&[0x30, 0x01, 7, 9]),
            Some((0x30, &[7][..], &[9][..]))
        );
    }
}
