//! Where a daemon listens: `unix://PATH`, `tcp://HOST:PORT`, or
//! `tls://HOST:PORT` (TCP under TLS; see [`crate::tls`]).

use std::path::PathBuf;

use crate::ClientError;

/// A daemon address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
    /// A TCP `host:port` spoken under TLS.
    Tls(String),
}

impl Endpoint {
    /// Parses `unix:///abs/path.sock`, `unix://relative.sock`, `unix:path`,
    /// a bare path starting with `/` or `.`, or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::InvalidEndpoint {
            endpoint: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        for (scheme, make) in [("tcp", Endpoint::Tcp as fn(String) -> Endpoint), ("tls", Endpoint::Tls)] {
            let Some(rest) = text.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else {
                continue;
            };
            let rest = rest.trim_end_matches('/');
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(bad(&format!("expected {scheme}://HOST:PORT")));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!(
                    "expected {scheme}://HOST:PORT with a port from 0 to 65535"
                )));
            }
            return Ok(make(rest.to_string()));
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(Endpoint::Unix(PathBuf::from(text)));
        }
        Err(bad("expected unix://PATH, tcp://HOST:PORT or tls://HOST:PORT"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::Tls(addr) => write!(f, "tls://{addr}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Endpoint, ClientError> {
        Endpoint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            Endpoint::parse("unix:///run/shardd/shardd.sock").unwrap(),
            Endpoint::Unix("/run/shardd/shardd.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix://shardd.sock").unwrap(),
            Endpoint::Unix("shardd.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:./s.sock").unwrap(),
            Endpoint::Unix("./s.sock".into())
        );
        assert_eq!(
            Endpoint::parse("./shardd.sock").unwrap(),
            Endpoint::Unix("./shardd.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.2:7070").unwrap(),
            Endpoint::Tcp("10.0.0.2:7070".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:7070").unwrap(),
            Endpoint::Tcp("[::1]:7070".into())
        );
        assert_eq!(
            Endpoint::parse("tls://node3:7443").unwrap(),
            Endpoint::Tls("node3:7443".into())
        );
        assert_eq!(
            Endpoint::parse("tls://node3:7443").unwrap().to_string(),
            "tls://node3:7443"
        );
        for bad in [
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "tls://host",
            "http://x:1",
            "unix://",
            "shardd.sock",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Endpoint::parse("unix:///a.sock").unwrap().to_string(), "unix:///a.sock");
    }
}
