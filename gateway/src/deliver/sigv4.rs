//! AWS Signature Version 4 for `authType: SIGV4` targets (Amazon Managed
//! Service for Prometheus, service `aps`): signing with the `aws-sigv4`
//! crate, and where the credentials come from.
//!
//! Signing covers every header of the request (as the AWS SDKs and
//! Prometheus do) plus `x-amz-date`, `x-amz-content-sha256` (the hash of the
//! exact compressed body sent) and, with session credentials,
//! `x-amz-security-token`.
//!
//! Credentials, first found wins ([`resolve`]):
//! 1. the export's static keys (`sigv4AccessKey`, `sigv4SecretKey`);
//! 2. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`;
//! 3. the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `$HOME/.aws/credentials`), profile `AWS_PROFILE` or `default`. It is
//!    read again whenever its modification time or size changes (checked at
//!    most once a second), so a session token rotated by a sidecar or
//!    `aws sso login` is used without a restart.
//!
//! A 403 whose body says the token expired or is not valid
//! ([`names_expired_token`]) is retried, not dropped (`policy.rs`), and any
//! 403 of a SigV4 target makes the next attempt read the file again whatever
//! its time stamp ([`reload`]): Prometheus drops those samples
//! (prometheus#15186).
//! `sigv4RoleArn` (STS AssumeRole) is refused by validation.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key (never logged).
    pub secret_key: String,
    /// Session token, if temporary credentials (never logged).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Signs `req`, whose body is `body`, for `service` in `region` at `now`:
/// adds `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` (with a
/// session token) and `authorization`, the last two marked sensitive.
pub fn sign_request<B>(
    req: &mut http::Request<B>,
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), String> {
    let identity = aws_credential_types::Credentials::new(
        &creds.access_key,
        &creds.secret_key,
        creds.session_token.clone(),
        None,
        "fanout",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("SigV4: {e}"))?
        .into();
    let uri = req.uri().to_string();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("SigV4: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("SigV4: {e}"))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    for name in [http::header::AUTHORIZATION.as_str(), "x-amz-security-token"] {
        if let Some(v) = req.headers_mut().get_mut(name) {
            v.set_sensitive(true);
        }
    }
    Ok(())
}

/// Whether a 403 body says the credentials' token expired or is not valid
/// (AWS: `ExpiredToken`, `ExpiredTokenException`, `InvalidClientTokenId`,
/// `UnrecognizedClientException`, "The security token included in the
/// request is expired/invalid").
pub fn names_expired_token(body: &str) -> bool {
    const MARKS: [&str; 5] = [
        "expiredtoken",
        "invalidclienttokenid",
        "unrecognizedclientexception",
        "security token included in the request is expired",
        "security token included in the request is invalid",
    ];
    let body = body.to_ascii_lowercase();
    MARKS.iter().any(|m| body.contains(m))
}

/// The credentials to sign with now: the static keys when both are set,
/// else the environment, else the shared credentials file (module docs).
pub fn resolve(static_keys: Option<(&str, &str)>) -> Result<Credentials, String> {
    if let Some((access_key, secret_key)) = static_keys {
        return Ok(Credentials {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            session_token: None,
        });
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(access_key), Some(secret_key)) =
        (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Credentials {
            access_key,
            secret_key,
            session_token: env("AWS_SESSION_TOKEN"),
        });
    }
    let path = shared_file().ok_or(
        "SIGV4 without static keys needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the gateway's environment, or a shared credentials file (AWS_SHARED_CREDENTIALS_FILE or $HOME/.aws/credentials)",
    )?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    FILE.lock()
        .map_err(|_| "credentials cache poisoned".to_owned())?
        .get(&path, &profile)
}

/// Makes the next [`resolve`] read the shared credentials file again.
pub fn reload() {
    if let Ok(mut f) = FILE.lock() {
        f.stale = true;
    }
}

fn shared_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join("credentials"))
}

/// How often the file's time stamp is looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

static FILE: Mutex<FileCache> = Mutex::new(FileCache {
    key: None,
    checked: None,
    stale: false,
    creds: None,
});

/// The shared credentials file as last read.
struct FileCache {
    /// Path, profile, modification time and size it was read at.
    key: Option<(PathBuf, String, Option<SystemTime>, u64)>,
    checked: Option<Instant>,
    stale: bool,
    creds: Option<Result<Credentials, String>>,
}

impl FileCache {
    fn get(&mut self, path: &PathBuf, profile: &str) -> Result<Credentials, String> {
        let now = Instant::now();
        let recent = self
            .checked
            .is_some_and(|t| now.duration_since(t) < CHECK_EVERY);
        let same_target = self
            .key
            .as_ref()
            .is_some_and(|(p, pr, ..)| p == path && pr == profile);
        if let (true, true, false, Some(c)) = (recent, same_target, self.stale, &self.creds) {
            return c.clone();
        }
        self.checked = Some(now);
        let meta = std::fs::metadata(path).ok();
        let stamp = (
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.as_ref().map_or(0, |m| m.len()),
        );
        let unchanged = self
            .key
            .as_ref()
            .is_some_and(|(p, pr, t, l)| p == path && pr == profile && (*t, *l) == stamp);
        if let (true, false, Some(c)) = (unchanged, self.stale, &self.creds) {
            return c.clone();
        }
        let read = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the AWS credentials file {}: {e}", path.display()))
            .and_then(|text| parse_profile(&text, profile).ok_or_else(|| {
                format!(
                    "the AWS credentials file {} has no aws_access_key_id and aws_secret_access_key in profile [{profile}]",
                    path.display()
                )
            }));
        if self.creds.as_ref().is_some_and(|c| c.is_ok())
            && read
                .as_ref()
                .is_ok_and(|n| Some(n) != self.creds.as_ref().and_then(|c| c.as_ref().ok()))
        {
            tracing::info!(file = %path.display(), profile, "delivery: AWS credentials changed; signing with the new ones");
        }
        self.key = Some((path.clone(), profile.to_owned(), stamp.0, stamp.1));
        self.stale = false;
        self.creds = Some(read.clone());
        read
    }
}

/// The keys of `[profile]` in an AWS shared credentials file (INI).
fn parse_profile(text: &str, profile: &str) -> Option<Credentials> {
    let (mut inside, mut access, mut secret, mut token) = (false, None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => access = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some(Credentials {
        access_key: access?,
        secret_key: secret?,
        session_token: token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GET Object example of the AWS S3 SigV4 documentation, signed by
    /// the crate as Fanout calls it.
    #[test]
    fn deliver_sigv4_matches_the_aws_documentation_example() {
        let mut req = http::Request::get("https://examplebucket.s3.amazonaws.com/test.txt")
            .header("range", "bytes=0-9")
            .body(())
            .unwrap();
        let creds = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        sign_request(&mut req, b"", &creds, "us-east-1", "s3", at).unwrap();
        let h = req.headers();
        assert_eq!(
            h["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(h["x-amz-date"], "20130524T000000Z");
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(h["authorization"].is_sensitive());
        assert!(!format!("{creds:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn the_shared_credentials_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let write = |ak: &str| {
            std::fs::write(
                &path,
                format!("[other]\naws_access_key_id = X\naws_secret_access_key = Y\n\n[default]\naws_access_key_id = {ak}\naws_secret_access_key = secret-{ak}\naws_session_token = token-{ak}\n"),
            )
            .unwrap();
        };
        write("AKIAFIRST");
        let mut cache = FileCache {
            key: None,
            checked: None,
            stale: false,
            creds: None,
        };
        let c = cache.get(&path, "default").unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.session_token.as_deref()),
            ("AKIAFIRST", Some("token-AKIAFIRST"))
        );
        // Rotated (a longer key: the size changes even within the clock's
        // resolution): found at the next look, or at once after reload().
        write("AKIASECOND1");
        cache.stale = true;
        assert_eq!(
            cache.get(&path, "default").unwrap().access_key,
            "AKIASECOND1"
        );
        cache.checked = None;
        write("AKIATHIRD22");
        assert_eq!(
            cache.get(&path, "default").unwrap().access_key,
            "AKIATHIRD22"
        );
        assert_eq!(cache.get(&path, "other").unwrap().access_key, "X");
        let e = cache.get(&path, "missing").unwrap_err();
        assert!(e.contains("[missing]") && !e.contains("secret-AKIA"), "{e}");
    }

    #[test]
    fn expired_and_invalid_tokens_are_recognized() {
        for body in [
            r#"{"message":"The security token included in the request is expired"}"#,
            "<Code>ExpiredToken</Code>",
            "ExpiredTokenException: ...",
            "InvalidClientTokenId",
        ] {
            assert!(names_expired_token(body), "{body}");
        }
        assert!(!names_expired_token("403 Forbidden: not allowed to write"));
    }
}
