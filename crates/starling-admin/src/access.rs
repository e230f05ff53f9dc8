//! Who may use `/api/v1`: a bearer token from the token file (one per line,
//! reloaded on SIGHUP), or, without a token file, loopback clients only.

use std::path::PathBuf;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;

use crate::error::ApiError;
use crate::Ctx;

/// The token file could not be read, or holds no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading the file failed.
    #[error("http-token-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("http-token-file {path}: no token in it (one per line)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The API's bearer tokens.
pub struct Tokens {
    path: Option<PathBuf>,
    tokens: RwLock<Vec<String>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads the tokens of `path` (none: loopback clients only).
    pub fn load(path: Option<PathBuf>) -> Result<Tokens, TokenError> {
        let tokens = match &path {
            Some(p) => read(p)?,
            None => Vec::new(),
        };
        Ok(Tokens {
            path,
            tokens: RwLock::new(tokens),
        })
    }

    /// Reads the token file again; on error the tokens in force stay.
    pub fn reload(&self) -> Result<(), TokenError> {
        if let Some(p) = &self.path {
            let fresh = read(p)?;
            *self.tokens.write() = fresh;
        }
        Ok(())
    }

    /// Whether a token file is configured.
    pub fn required(&self) -> bool {
        self.path.is_some()
    }

    /// Whether `given` is one of the tokens (compared in constant time).
    pub fn accepts(&self, given: &str) -> bool {
        self.tokens.read().iter().fold(false, |ok, t| {
            ok | constant_time_eq(t.as_bytes(), given.as_bytes())
        })
    }
}

fn read(path: &PathBuf) -> Result<Vec<String>, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.clone(),
        source,
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        return Err(TokenError::Empty { path: path.clone() });
    }
    Ok(tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets a request through to the API, or answers 401 (no or a wrong token)
/// or 403 (no token file, and the client is not on loopback).
pub(crate) async fn require(
    State(ctx): State<Ctx>,
    ConnectInfo(crate::PeerAddr(peer)): ConnectInfo<crate::PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    if ctx.tokens.required() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        return match given {
            Some(token) if ctx.tokens.accepts(token) => next.run(request).await,
            _ => {
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an Authorization: Bearer header with a token from the token file is required",
                )
                .into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                response
            }
        };
    }
    let forbidden =
        |why: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
    if !peer.ip().is_loopback() {
        return forbidden("without http-token-file the API answers loopback clients only");
    }
    // A web page from elsewhere can reach a loopback listener through the
    // browser on the same machine: by DNS rebinding (its own name resolving
    // to 127.0.0.1, which makes it same-origin) or by a cross-site request.
    // Without tokens, only requests naming the loopback host, from no other
    // origin, are answered.
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !host.is_some_and(loopback_authority) {
        return forbidden(
            "without http-token-file the Host header must name localhost, 127.0.0.1 or [::1]",
        );
    }
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    if let Some(origin) = origin {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !authority.is_some_and(loopback_authority) {
            return forbidden("without http-token-file cross-origin requests are refused");
        }
    }
    next.run(request).await
}

/// Whether `host[:port]` names the loopback interface.
fn loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "localhost:8081",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:8081",
            "[::1]",
            "LOCALHOST:1",
        ] {
            assert!(loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8081",
            "10.0.0.1:80",
            "[::2]:1",
            "localhost.evil.example",
            "",
            "null",
        ] {
            assert!(!loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_read_one_per_line_and_reloaded() {
        let path = std::env::temp_dir().join(format!("starling-tokens-{}", std::process::id()));
        std::fs::write(&path, "# operators\nalpha\n\n  beta  \n").unwrap();
        let t = Tokens::load(Some(path.clone())).unwrap();
        assert!(t.required() && t.accepts("alpha") && t.accepts("beta"));
        assert!(!t.accepts("alph") && !t.accepts("# operators") && !t.accepts(""));
        std::fs::write(&path, "gamma\n").unwrap();
        t.reload().unwrap();
        assert!(t.accepts("gamma") && !t.accepts("alpha"));
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(t.reload(), Err(TokenError::Empty { .. })));
        assert!(t.accepts("gamma"), "a failed reload keeps the tokens");
        assert!(!format!("{t:?}").contains("gamma"));
        let _ = std::fs::remove_file(&path);
    }
}
