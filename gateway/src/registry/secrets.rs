//! What is secret in an export target's config, and how it is kept out of
//! reads, logs, the stats API and the console.
//!
//! # Which values are secret
//! `basicToken`, `password`, `sigv4SecretKey` (and the SigV4 keys and session
//! token taken from the environment), every custom header value, and every
//! value of the endpoint's query string. Header names, query parameter names,
//! the user name and the SigV4 access key id are not secret.
//!
//! # Endpoints
//! [`mask_endpoint`] replaces each query value with `"***"`
//! (`…/write?api_key=***&tenant=***`; a parameter without `=` is masked
//! whole). Reads, log lines and the stats API show that form; the request to
//! the target uses the stored URL.
//!
//! # Scrubbing what a target sends back
//! A target may echo the request (its headers, its URL) in an error body, and
//! that body becomes the target's `lastError`, a log line, a recent error in
//! the stats stream and a line in the console. A [`Scrubber`] is built once
//! per target config and holds every form in which one of its secrets can
//! appear: clear, percent-encoded (upper and lower case hex), base64 (standard
//! and URL-safe, padded or not, whole and at the three alignments it can take
//! inside a longer base64 text), and the base64 of `user:password` that Basic
//! auth sends. [`Scrubber::scrub`] replaces each of them with `"***"`, and
//! also any value after `authorization:` / `authorization=` (case-insensitive,
//! up to the end of the line, a quote or a comma), whatever it contains. It
//! runs on the error path only: a successful send never calls it.

use std::borrow::Cow;

use base64::Engine;

use super::model::MASK;
use super::resolve::{Auth, TargetConfig};

/// `endpoint` with every query value replaced by `"***"`; borrowed when it
/// has no query value.
pub fn mask_endpoint(endpoint: &str) -> Cow<'_, str> {
    let Some((base, rest)) = endpoint.split_once('?') else {
        return Cow::Borrowed(endpoint);
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    if query.split('&').all(|p| p.is_empty() || p.ends_with('=')) {
        return Cow::Borrowed(endpoint);
    }
    let mut out = String::with_capacity(endpoint.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, "")) => {
                out.push_str(name);
                out.push('=');
            }
            Some((name, _)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
            }
            None if pair.is_empty() => {}
            None => out.push_str(MASK),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Cow::Owned(out)
}

/// Whether `endpoint` carries a query value written as `"***"` (a masked
/// endpoint sent back by a client).
pub fn endpoint_has_mask(endpoint: &str) -> bool {
    let Some((_, rest)) = endpoint.split_once('?') else {
        return false;
    };
    let query = rest.split('#').next().unwrap_or("");
    query
        .split('&')
        .any(|p| p == MASK || p.split_once('=').is_some_and(|(_, v)| v == MASK))
}

/// The non-empty query values of `endpoint`, as written (maybe percent-encoded).
fn query_values(endpoint: &str) -> impl Iterator<Item = &str> {
    let query = endpoint
        .split_once('?')
        .map(|(_, rest)| rest.split('#').next().unwrap_or(""))
        .unwrap_or("");
    query
        .split('&')
        .map(|p| p.split_once('=').map_or(p, |(_, v)| v))
        .filter(|v| !v.is_empty())
}

/// Replaces every form of a target's secrets in text a target sent back.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Scrubber {
    /// Every form of every secret, longest first, without duplicates.
    patterns: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} patterns)", self.patterns.len())
    }
}

/// Shortest base64 fragment taken from inside a longer text: shorter ones
/// would match unrelated base64 by chance.
const MIN_FRAGMENT: usize = 8;

impl Scrubber {
    /// The scrubber of one target: its auth secrets, header values and query
    /// values; for SigV4 without static keys, the environment's keys.
    pub fn new(config: &TargetConfig) -> Scrubber {
        let mut secrets: Vec<String> = Vec::new();
        let mut whole_b64: Vec<String> = Vec::new();
        match &config.auth {
            Auth::None => {}
            Auth::Bearer { token } => secrets.push(token.expose().to_owned()),
            Auth::Basic { username, password } => {
                secrets.push(password.expose().to_owned());
                whole_b64.push(format!("{username}:{}", password.expose()));
            }
            Auth::Sigv4 { secret_key, .. } => match secret_key {
                Some(s) => secrets.push(s.expose().to_owned()),
                None => {
                    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
                        if let Ok(v) = std::env::var(var) {
                            secrets.push(v);
                        }
                    }
                }
            },
        }
        for value in config.headers.values() {
            secrets.push(value.expose().to_owned());
        }
        for value in query_values(&config.endpoint) {
            secrets.push(value.to_owned());
            if let Some(decoded) = percent_decode(value) {
                secrets.push(decoded);
            }
        }
        Scrubber::from_secrets(secrets, whole_b64)
    }

    /// A scrubber for `secrets` (every form of each), plus the base64 forms
    /// of `whole_b64` (texts sent only base64-encoded, like `user:password`).
    pub fn from_secrets(secrets: Vec<String>, whole_b64: Vec<String>) -> Scrubber {
        let mut patterns = Vec::new();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            patterns.push(s.clone());
            patterns.push(percent_encode(s, false));
            patterns.push(percent_encode(s, true));
            base64_forms(s.as_bytes(), &mut patterns);
        }
        for s in whole_b64.iter().filter(|s| !s.is_empty()) {
            base64_forms(s.as_bytes(), &mut patterns);
        }
        patterns.retain(|p| !p.is_empty() && p != MASK);
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        Scrubber { patterns }
    }

    /// `text` with every secret form and every `Authorization` value
    /// replaced by `"***"`; borrowed when there was nothing to replace.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut covered: Vec<(usize, usize)> = Vec::new();
        for p in &self.patterns {
            let mut from = 0;
            while let Some(i) = text[from..].find(p.as_str()) {
                let start = from + i;
                covered.push((start, start + p.len()));
                // Overlapping matches too: advance by one character.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        authorization_values(text, &mut covered);
        if covered.is_empty() {
            return Cow::Borrowed(text);
        }
        covered.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut i = 0;
        while i < covered.len() {
            let (start, mut end) = covered[i];
            i += 1;
            while i < covered.len() && covered[i].0 <= end {
                end = end.max(covered[i].1);
                i += 1;
            }
            // Runs are merged, so each starts after the previous one ended.
            out.push_str(&text[at..start]);
            out.push_str(MASK);
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

/// Adds the ranges of values that follow `authorization` and `:` or `=`.
fn authorization_values(text: &str, covered: &mut Vec<(usize, usize)>) {
    const KEY: &[u8] = b"authorization";
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + KEY.len() <= bytes.len() {
        if !bytes[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            i += 1;
            continue;
        }
        let mut j = i + KEY.len();
        while j < bytes.len() && matches!(bytes[j], b'"' | b'\'' | b' ' | b'\t') {
            j += 1;
        }
        if j < bytes.len() && matches!(bytes[j], b':' | b'=') {
            j += 1;
            while j < bytes.len() && matches!(bytes[j], b'"' | b'\'' | b' ' | b'\t') {
                j += 1;
            }
            let start = j;
            while j < bytes.len() && !matches!(bytes[j], b'\r' | b'\n' | b'"' | b'\'' | b',') {
                j += 1;
            }
            if j > start {
                covered.push((start, j));
            }
        }
        i = j.max(i + 1);
    }
}

/// Pushes the base64 forms of `secret`: whole (standard and URL-safe, padded
/// and not) and the fragments it shows inside a longer base64 text.
fn base64_forms(secret: &[u8], out: &mut Vec<String>) {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    out.push(STANDARD.encode(secret));
    out.push(URL_SAFE.encode(secret));
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        // With k bytes before it, the first characters also encode those
        // bytes and the last one the bytes after it: keep the rest.
        for k in 0..3usize {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(secret);
            let enc = engine.encode(&buf);
            let skip = [0, 2, 3][k];
            let end = if buf.len() % 3 == 0 {
                enc.len()
            } else {
                enc.len() - 1
            };
            if end > skip && end - skip >= MIN_FRAGMENT {
                out.push(enc[skip..end].to_owned());
            }
            if k == 0 {
                out.push(enc);
            }
        }
    }
}

/// Percent-encodes every byte but the RFC 3986 unreserved ones.
fn percent_encode(s: &str, lower: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (form encoding); `None` when that changes
/// nothing or does not give UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().filter(|d| d != s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resolve::DeliveryOptions;
    use crate::registry::Secret;

    #[test]
    fn registry_secrets_endpoint_query_values_are_masked() {
        assert_eq!(
            mask_endpoint("https://h:9/api/v1/write?api_key=k3y&tenant=a&flag&empty="),
            "https://h:9/api/v1/write?api_key=***&tenant=***&***&empty="
        );
        assert!(matches!(
            mask_endpoint("http://h/api/v1/write"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(mask_endpoint("http://h/w?a="), Cow::Borrowed(_)));
        assert!(endpoint_has_mask("http://h/w?a=***"));
        assert!(!endpoint_has_mask("http://h/w?a=x***"));
        assert!(!endpoint_has_mask("http://h/w***"));
    }

    fn config() -> TargetConfig {
        TargetConfig {
            endpoint: "http://127.0.0.1:9/api/v1/write?api_key=q%2Bkey%2Fvalue&x=plainQueryValue"
                .into(),
            auth: Auth::Basic {
                username: "svc".into(),
                password: Secret::new("pa55:word/42"),
            },
            headers: [("x-api-key".to_owned(), Secret::new("hdr-key-123456"))].into(),
            labels: Default::default(),
            delivery: DeliveryOptions::default(),
        }
    }

    #[test]
    fn registry_secrets_scrubber_masks_every_form() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let s = Scrubber::new(&config());
        let basic = STANDARD.encode("svc:pa55:word/42");
        let text = format!(
            "401 bad creds: x-api-key: hdr-key-123456; pw pa55%3Aword%2F42 pa55%3aword%2f42 \
             b64 {} url {} basic {basic}; uri /api/v1/write?api_key=q%2Bkey%2Fvalue&x=plainQueryValue \
             decoded q+key/value; blob {}",
            STANDARD.encode("pa55:word/42"),
            URL_SAFE_NO_PAD.encode("hdr-key-123456"),
            STANDARD.encode("{\"key\":\"hdr-key-123456\"}"),
        );
        let out = s.scrub(&text);
        for secret in [
            "hdr-key-123456",
            "pa55:word/42",
            "pa55%3Aword%2F42",
            "pa55%3aword%2f42",
            "q%2Bkey%2Fvalue",
            "q+key/value",
            "plainQueryValue",
            &basic,
            &STANDARD.encode("pa55:word/42"),
            &URL_SAFE_NO_PAD.encode("hdr-key-123456"),
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.starts_with("401 bad creds: x-api-key: ***; pw *** ***"),
            "{out}"
        );
        // Inside the base64 of a longer text, the secret's part goes.
        let blob = STANDARD.encode("{\"key\":\"hdr-key-123456\"}");
        assert!(!out.contains(&blob[12..24]), "{out}");
        assert!(out.contains(&blob[..8]), "{out}");
    }

    #[test]
    fn registry_secrets_authorization_values_are_masked_whatever_they_are() {
        let s = Scrubber::default();
        assert_eq!(
            s.scrub("Authorization: Basic c3ZjOnNlY3JldA==\r\nHost: x"),
            "Authorization: ***\r\nHost: x"
        );
        assert_eq!(
            s.scrub(r#"{"authorization":"Bearer abc","x":1}"#),
            r#"{"authorization":"***","x":1}"#
        );
        assert_eq!(
            s.scrub("proxy-AUTHORIZATION = AWS4 Credential=AK/1, Signature=ff"),
            "proxy-AUTHORIZATION = ***, Signature=ff"
        );
        assert_eq!(s.scrub("no authorization here"), "no authorization here");
        assert!(matches!(s.scrub("nothing"), Cow::Borrowed(_)));
    }

    #[test]
    fn registry_secrets_overlapping_and_unicode_matches() {
        let s = Scrubber::from_secrets(vec!["abcabc".into(), "cab".into()], Vec::new());
        assert_eq!(s.scrub("xabcabcabcy"), "x***y");
        let s = Scrubber::from_secrets(vec!["é密".into()], Vec::new());
        assert_eq!(s.scrub("aé密é密b"), "a***b");
        assert_eq!(
            s.scrub(&percent_encode("é密", false)),
            "***",
            "percent-encoded UTF-8"
        );
    }
}
