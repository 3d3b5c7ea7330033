//! Cluster authentication for remote-write (SPEC §2).
//!
//! A sender proves which cluster it is with `Authorization: Bearer <ingest
//! token>`, or with basic auth where the user is the cluster id and the
//! password is the token. Parsing is plain code; the lookup is behind the
//! [`Authenticator`] trait so ingest does not depend on how the registry is
//! stored or swapped. Tokens never appear in an error message or a log line.

use std::sync::Arc;

use base64::Engine as _;
use http::HeaderMap;

use crate::registry::ClusterInfo;

/// Looks up the cluster that an ingest token belongs to.
pub trait Authenticator: Send + Sync + 'static {
    /// The cluster whose ingest token is `token` (and whose id is `cluster_id`
    /// when the sender named one), or `None`.
    fn authenticate(&self, cluster_id: Option<&str>, token: &str) -> Option<Arc<ClusterInfo>>;

    /// Whether the registry is loaded, so writes can be attributed (`/readyz`).
    fn ready(&self) -> bool {
        true
    }
}

impl Authenticator for arc_swap::ArcSwap<crate::registry::Snapshot> {
    fn authenticate(&self, cluster_id: Option<&str>, token: &str) -> Option<Arc<ClusterInfo>> {
        self.load().authenticate(cluster_id, token)
    }
}

/// Credentials found in an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The cluster id (basic auth user), if the sender gave one.
    pub cluster_id: Option<String>,
    /// The ingest token.
    pub token: String,
}

/// Why the `Authorization` header could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header: send `Authorization: Bearer <cluster ingest token>` or basic auth with the cluster id as user and the token as password")]
    Missing,
    /// A header that is neither Bearer nor Basic, or is not decodable.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// Well-formed credentials that match no cluster.
    #[error("unknown cluster ingest token (or cluster id)")]
    Unknown,
}

/// Splits an `Authorization` value into its scheme and its (trimmed)
/// credentials.
fn scheme(value: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    Some((scheme, rest.trim()))
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1). The admin API uses it too.
pub fn bearer(value: &str) -> Option<&str> {
    scheme(value).and_then(|(s, rest)| s.eq_ignore_ascii_case("bearer").then_some(rest))
}

/// Extracts the credentials of a request.
pub fn credentials(headers: &HeaderMap) -> Result<Credentials, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed("not visible ASCII"))?;
    if let Some(token) = bearer(value) {
        if token.is_empty() {
            return Err(AuthError::Malformed("empty bearer token"));
        }
        return Ok(Credentials {
            cluster_id: None,
            token: token.to_owned(),
        });
    }
    let (kind, rest) = scheme(value).ok_or(AuthError::Malformed(
        "expected `Bearer <token>` or `Basic <base64>`",
    ))?;
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Malformed("basic credentials are not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| AuthError::Malformed("basic credentials are not UTF-8"))?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed(
            "basic credentials lack `user:password`",
        ))?;
        if password.is_empty() {
            return Err(AuthError::Malformed(
                "empty basic auth password (the ingest token)",
            ));
        }
        return Ok(Credentials {
            cluster_id: (!user.is_empty()).then(|| user.to_owned()),
            token: password.to_owned(),
        });
    }
    Err(AuthError::Malformed(
        "unsupported scheme: expected `Bearer` or `Basic`",
    ))
}

/// Authenticates a request's headers against `auth`.
pub fn authenticate(
    auth: &dyn Authenticator,
    headers: &HeaderMap,
) -> Result<Arc<ClusterInfo>, AuthError> {
    let creds = credentials(headers)?;
    auth.authenticate(creds.cluster_id.as_deref(), &creds.token)
        .ok_or(AuthError::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn ingest_auth_parses_bearer_and_basic() {
        assert_eq!(
            credentials(&headers("Bearer tok-1")).unwrap(),
            Credentials {
                cluster_id: None,
                token: "tok-1".into()
            }
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode("c1:tok:with:colons");
        assert_eq!(
            credentials(&headers(&format!("basic {b64}"))).unwrap(),
            Credentials {
                cluster_id: Some("c1".into()),
                token: "tok:with:colons".into()
            }
        );
        assert_eq!(credentials(&HeaderMap::new()), Err(AuthError::Missing));
        assert!(matches!(
            credentials(&headers("Digest abc")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            credentials(&headers("Basic !!!")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            credentials(&headers("Bearer")),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn ingest_auth_errors_never_contain_the_token() {
        let msg = credentials(&headers("Weird s3cret"))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}
